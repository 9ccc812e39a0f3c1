<?php

declare(strict_types=1);

namespace Expresso\ImSidecar\Exception;

/**
 * HTTP 409 not_connected: the session has no XMPP stream; call Client::connect() first.
 */
final class NotConnectedException extends ApiException
{
}
