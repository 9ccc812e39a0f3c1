<?php

declare(strict_types=1);

namespace Expresso\ImSidecar\Exception;

/**
 * HTTP 401: the PHP session is missing, invalid, unknown, expired or not logged in (codes session_missing, session_invalid, session_not_found, session_expired, not_logged_in). Send the user to the login page.
 */
final class SessionException extends ApiException
{
}
