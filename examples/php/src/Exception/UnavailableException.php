<?php

declare(strict_types=1);

namespace Expresso\ImSidecar\Exception;

/**
 * HTTP 503 store_unavailable or shutting_down: the session store is unreachable or the sidecar is stopping; retry shortly.
 */
final class UnavailableException extends ApiException
{
}
