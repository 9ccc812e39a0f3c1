<?php

declare(strict_types=1);

namespace Expresso\ImSidecar\Exception;

/**
 * The request did not complete: the sidecar is not listening (connection
 * refused), the socket path is wrong, a timeout expired, or the response was
 * not valid JSON. getCurlErrno() is cURL's error number (0 when the failure
 * was not cURL's, e.g. an undecodable body).
 *
 * For events() a transport failure loses nothing: call it again with the
 * same cursor.
 */
final class TransportException extends ClientException
{
    public function __construct(
        string $message,
        private readonly int $curlErrno = 0,
        ?\Throwable $previous = null,
    ) {
        parent::__construct($message, $curlErrno, $previous);
    }

    public function getCurlErrno(): int
    {
        return $this->curlErrno;
    }

    /** True if the failure was a cURL timeout (CURLE_OPERATION_TIMEDOUT). */
    public function isTimeout(): bool
    {
        return $this->curlErrno === CURLE_OPERATION_TIMEDOUT;
    }
}
