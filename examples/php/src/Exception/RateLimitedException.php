<?php

declare(strict_types=1);

namespace Expresso\ImSidecar\Exception;

/**
 * HTTP 429 rate_limited: too many calls; back off and retry later.
 */
final class RateLimitedException extends ApiException
{
}
