<?php

declare(strict_types=1);

namespace Expresso\ImSidecar\Exception;

/**
 * Base class of every exception thrown by the imsidecar client.
 *
 * Catch this to handle any failure of a sidecar call; catch a subclass to
 * react to one reason (the session is gone, the stream is not connected,
 * the sidecar is unreachable, ...).
 */
class ClientException extends \RuntimeException
{
}
