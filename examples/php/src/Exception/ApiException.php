<?php

declare(strict_types=1);

namespace Expresso\ImSidecar\Exception;

/**
 * The sidecar answered with an API error: `{"error":{"code","message"}}`.
 *
 * getStatus() is the HTTP status, getErrorCode() the API's machine-readable
 * code (e.g. "bad_request", "too_large", "not_found"). Subclasses name the
 * reasons a caller usually handles differently.
 */
class ApiException extends ClientException
{
    public function __construct(
        private readonly int $status,
        private readonly string $errorCode,
        string $message = '',
        ?\Throwable $previous = null,
    ) {
        parent::__construct(
            $message !== '' ? $message : sprintf('imsidecar: HTTP %d %s', $status, $errorCode),
            $status,
            $previous,
        );
    }

    /** HTTP status of the response, e.g. 409. */
    public function getStatus(): int
    {
        return $this->status;
    }

    /** The API error code, e.g. "not_connected"; "" if the body had none. */
    public function getErrorCode(): string
    {
        return $this->errorCode;
    }

    /**
     * Builds the most specific exception for a status and code.
     */
    public static function fromResponse(int $status, string $code, string $message): self
    {
        $text = sprintf('imsidecar: HTTP %d %s: %s', $status, $code !== '' ? $code : 'error', $message);
        return match (true) {
            $status === 401 => new SessionException($status, $code, $text),
            // Other 409s (nick_in_use, room_full, not_in_room) are not about the stream.
            $status === 409 && ($code === 'not_connected' || $code === '') => new NotConnectedException($status, $code, $text),
            $status === 429 => new RateLimitedException($status, $code, $text),
            $status === 502 => new XmppException($status, $code, $text),
            $status === 503 => new UnavailableException($status, $code, $text),
            default => new self($status, $code, $text),
        };
    }
}
