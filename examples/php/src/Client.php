<?php

declare(strict_types=1);

namespace Expresso\ImSidecar;

use Expresso\ImSidecar\Exception\ApiException;
use Expresso\ImSidecar\Exception\ClientException;
use Expresso\ImSidecar\Exception\TransportException;

/**
 * Client for the imsidecar HTTP API v1.
 *
 * One Client talks for one PHP session: every call carries the session id in
 * the X-Session-Id header, and the sidecar authenticates it by reading the
 * PHP session store itself. The user's password never passes through this
 * class. The sidecar listens on loopback TCP (default
 * http://127.0.0.1:8765) or on a unix socket ("unix:/run/imsidecar/api.sock").
 *
 * All strings are UTF-8 in both directions. Expresso pages in ISO-8859-1
 * must convert with mb_convert_encoding($s, 'UTF-8', 'ISO-8859-1') before
 * calling, and back when printing.
 *
 * Errors are exceptions: an API error is an ApiException (or one of its
 * subclasses: SessionException, NotConnectedException, RateLimitedException,
 * XmppException, UnavailableException); a failed request (sidecar down,
 * timeout, undecodable answer) is a TransportException. All of them extend
 * ClientException.
 *
 * Typical request handler of a long-poll endpoint:
 *
 *     session_start();
 *     $client = new Client(session_id(), tokenFile: '/etc/imsidecar/token');
 *     Client::releaseSessionLock();               // before the long poll!
 *     $page = $client->events($_GET['cursor'] ?? null, wait: 25);
 *     echo json_encode($page);
 */
final class Client
{
    /** The sidecar's default listen address. */
    public const DEFAULT_ENDPOINT = 'http://127.0.0.1:8765';

    /** Longest wait the API accepts for GET /v1/events, in seconds. */
    public const MAX_WAIT = 55;

    /** Seconds a long poll may take beyond its wait before cURL gives up. */
    private const POLL_GRACE = 5;

    private string $baseUrl;
    private ?string $socketPath = null;
    private ?string $token = null;
    private ?\CurlHandle $curl = null;

    /**
     * @param string      $sessionId      the PHP session id (session_id())
     * @param string      $endpoint       "http://127.0.0.1:8765", or "unix:/path/api.sock" / "/path/api.sock"
     * @param string|null $token          bearer token for --api-token-file deployments
     * @param string|null $tokenFile      file holding that token (read once, trimmed); used if $token is null
     * @param float       $connectTimeout seconds to establish the connection
     * @param float       $timeout        seconds for a whole ordinary call (events() uses wait + 5)
     *
     * @throws ClientException if the token file cannot be read or an argument is invalid
     */
    public function __construct(
        private string $sessionId,
        string $endpoint = self::DEFAULT_ENDPOINT,
        ?string $token = null,
        ?string $tokenFile = null,
        private float $connectTimeout = 2.0,
        private float $timeout = 10.0,
    ) {
        if ($sessionId === '' || preg_match('/[\r\n\0]/', $sessionId) === 1) {
            throw new ClientException('imsidecar: empty or malformed session id');
        }
        if ($connectTimeout <= 0 || $timeout <= 0) {
            throw new ClientException('imsidecar: timeouts must be positive');
        }
        if (str_starts_with($endpoint, 'unix:') || str_starts_with($endpoint, '/')) {
            $path = str_starts_with($endpoint, 'unix:') ? substr($endpoint, 5) : $endpoint;
            if ($path === '') {
                throw new ClientException('imsidecar: empty unix socket path');
            }
            $this->socketPath = $path;
            // The host is ignored on a unix socket, but HTTP needs one.
            $this->baseUrl = 'http://localhost';
        } elseif (preg_match('#^https?://[^/?\#]+$#', rtrim($endpoint, '/')) === 1) {
            $this->baseUrl = rtrim($endpoint, '/');
        } else {
            throw new ClientException('imsidecar: endpoint must be http://host:port or unix:/path, got ' . $endpoint);
        }
        if ($token === null && $tokenFile !== null) {
            $raw = @file_get_contents($tokenFile);
            if ($raw === false) {
                throw new ClientException('imsidecar: cannot read token file ' . $tokenFile);
            }
            $token = trim($raw);
        }
        if ($token !== null && ($token === '' || preg_match('/[\r\n\0]/', $token) === 1)) {
            throw new ClientException('imsidecar: empty or malformed API token');
        }
        $this->token = $token;
    }

    public function __destruct()
    {
        $this->curl = null; // closes the handle and its kept-alive connection
    }

    /** A copy of this client that speaks for another PHP session. */
    public function withSessionId(string $sessionId): self
    {
        if ($sessionId === '' || preg_match('/[\r\n\0]/', $sessionId) === 1) {
            throw new ClientException('imsidecar: empty or malformed session id');
        }
        $c = clone $this;
        $c->sessionId = $sessionId;
        $c->curl = null;
        return $c;
    }

    /**
     * Releases the PHP session lock of the current request.
     *
     * Call it after reading what you need from $_SESSION and before a long
     * poll (events() with a wait). WHY: PHP's default "files" session
     * handler takes an exclusive flock() on sess_<id> in session_start() and
     * keeps it until the request ends or session_write_close() is called.
     * A long poll holding that lock for 25 seconds blocks every other request
     * of the same user that starts a session, including the one that would
     * send the message the user just typed; the page freezes until the poll
     * returns. Closing the session first lets those requests run at once.
     * $_SESSION stays readable afterwards; later writes are simply not saved.
     * It is harmless when no session is active.
     */
    public static function releaseSessionLock(): void
    {
        if (session_status() === PHP_SESSION_ACTIVE) {
            session_write_close();
        }
    }

    /**
     * Opens (or reuses) the user's XMPP stream. Idempotent.
     *
     * @param array{show?:string,status?:string,priority?:int} $presence initial presence
     * @return array{jid:string,state:string,cursor:string}
     */
    public function connect(array $presence = []): array
    {
        return $this->request('POST', '/v1/connect', $presence === [] ? null : $presence);
    }

    /**
     * Opens (or reuses) the user's XMPP stream and a BOSH session bound to
     * it, for a browser XMPP client to attach to without a password
     * (converse.js `authentication: 'prebind'`, Strophe.js
     * `attach(jid, sid, rid)`). Hand the answer to the page as JSON; the
     * sid dies with the PHP session.
     *
     * @return array{jid:string,sid:string,rid:int,url:string}
     */
    public function prebind(): array
    {
        return $this->request('POST', '/v1/prebind');
    }

    /** Closes the user's XMPP stream (contacts see them go offline). */
    public function disconnect(): void
    {
        $this->request('POST', '/v1/disconnect');
    }

    /**
     * Who the session belongs to.
     *
     * @return array{user:string,jid:string,fullname:string,email:string,state:string}
     */
    public function me(): array
    {
        return $this->request('GET', '/v1/me');
    }

    /**
     * Long-polls the session's event log.
     *
     * Returns at once when there are events after $cursor, otherwise waits up
     * to $wait seconds. Pass the returned "cursor" to the next call: that is
     * the acknowledgement. If a call fails midway, call again with the same
     * cursor and the same events come back. When "recovered" is false the
     * cursor was too old (or from before a sidecar restart): reload the
     * roster and the conversation history.
     *
     * Call self::releaseSessionLock() first.
     *
     * @return array{events:list<array<string,mixed>>,cursor:string,recovered:bool}
     */
    public function events(?string $cursor = null, int $wait = 25, int $limit = 100): array
    {
        if ($wait < 0 || $wait > self::MAX_WAIT) {
            throw new ClientException('imsidecar: wait must be between 0 and ' . self::MAX_WAIT);
        }
        if ($limit < 1) {
            throw new ClientException('imsidecar: limit must be positive');
        }
        $query = ['wait' => $wait, 'limit' => $limit];
        if ($cursor !== null && $cursor !== '') {
            $query = ['cursor' => $cursor] + $query;
        }
        return $this->request('GET', '/v1/events?' . http_build_query($query, '', '&', PHP_QUERY_RFC3986), null, $wait + self::POLL_GRACE);
    }

    /**
     * Sends a message. Returns its id (the one given, or one the sidecar made).
     * With $receipt the recipient's client is asked for a XEP-0184 receipt,
     * which arrives later as a "receipt" event carrying this id.
     */
    public function sendMessage(
        string $to,
        string $body,
        string $type = 'chat',
        ?string $id = null,
        ?string $thread = null,
        bool $receipt = false,
    ): string {
        $req = ['to' => $to, 'body' => $body, 'type' => $type];
        if ($id !== null) {
            $req['id'] = $id;
        }
        if ($thread !== null) {
            $req['thread'] = $thread;
        }
        if ($receipt) {
            $req['receipt'] = true;
        }
        $resp = $this->request('POST', '/v1/messages', $req);
        return (string) ($resp['id'] ?? '');
    }

    /**
     * Sets the user's presence.
     *
     * @param string $show "" (available), "away", "chat", "dnd" or "xa"
     */
    public function setPresence(string $show = '', string $status = '', int $priority = 0): void
    {
        $this->request('POST', '/v1/presence', ['show' => $show, 'status' => $status, 'priority' => $priority]);
    }

    /**
     * The user's roster with the presence of each contact's resources.
     *
     * @return list<array{jid:string,name:string,groups:list<string>,subscription:string,ask:string,presence:list<array<string,mixed>>}>
     */
    public function roster(): array
    {
        $resp = $this->request('GET', '/v1/roster');
        return $resp['items'] ?? [];
    }

    /**
     * Adds or updates a roster item.
     *
     * @param list<string> $groups
     */
    public function setRosterItem(string $jid, string $name = '', array $groups = []): void
    {
        $this->request('PUT', '/v1/roster/' . rawurlencode($jid), ['name' => $name, 'groups' => array_values($groups)]);
    }

    /** Removes a contact from the roster (and cancels subscriptions both ways). */
    public function removeRosterItem(string $jid): void
    {
        $this->request('DELETE', '/v1/roster/' . rawurlencode($jid));
    }

    /**
     * Manages a presence subscription.
     *
     * @param string $action "subscribe", "approve", "deny" or "cancel"
     */
    public function subscription(string $jid, string $action): void
    {
        $this->request('POST', '/v1/subscriptions/' . rawurlencode($jid), ['action' => $action]);
    }

    /**
     * Sends a XEP-0085 chat state notification.
     *
     * @param string $state "active", "composing", "paused", "inactive" or "gone"
     */
    public function chatState(string $to, string $state): void
    {
        $this->request('POST', '/v1/chatstates', ['to' => $to, 'state' => $state]);
    }

    // ---- Group chat (XEP-0045) -------------------------------------------

    /**
     * The MUC service's rooms and the rooms this session is in.
     *
     * @return array{service:string,rooms:list<array{jid:string,name:string,joined:bool}>,joined:list<array<string,mixed>>}
     */
    public function rooms(): array
    {
        return $this->request('GET', '/v1/rooms');
    }

    /**
     * Joins (or creates) a room: a name on the MUC service or room@service.
     * An empty nick lets the sidecar use the user's full name.
     *
     * @return array<string,mixed> the room with its occupants and "created"
     */
    public function joinRoom(string $room, string $nick = '', string $password = ''): array
    {
        $body = [];
        if ($nick !== '') {
            $body['nick'] = $nick;
        }
        if ($password !== '') {
            $body['password'] = $password;
        }
        // An empty PHP array would be encoded as a JSON list: send no body.
        return $this->request('POST', '/v1/rooms/' . rawurlencode($room) . '/join', $body === [] ? null : $body);
    }

    /** Leaves a room. */
    public function leaveRoom(string $room): void
    {
        $this->request('POST', '/v1/rooms/' . rawurlencode($room) . '/leave');
    }

    /** Sets a room's subject ("" clears it). */
    public function setRoomSubject(string $room, string $subject): void
    {
        $this->request('PUT', '/v1/rooms/' . rawurlencode($room) . '/subject', ['subject' => $subject]);
    }

    /**
     * One page of message history (XEP-0313) from GET /v1/history.
     *
     * @param array{with?:string,room?:string,before?:string,after?:string,start?:string,end?:string,max?:int} $query
     *        "before" => "" asks for the newest page; see docs/API.md
     * @return array{messages:list<array<string,mixed>>,complete:bool,first:string,last:string,count?:int}
     */
    public function history(array $query = []): array
    {
        $q = http_build_query(array_map('strval', $query), '', '&', PHP_QUERY_RFC3986);
        // http_build_query drops nothing, and keeps before= when empty.
        return $this->request('GET', '/v1/history' . ($q === '' ? '' : '?' . $q));
    }

    /**
     * A contact's avatar (vCard photo), or null when they have none.
     *
     * @return array{type:string,data:string,etag:string}|null
     */
    public function avatar(string $jid): ?array
    {
        $type = $etag = '';
        $ch = $this->handle();
        $headers = ['X-Session-Id: ' . $this->sessionId, 'Expect:'];
        if ($this->token !== null) {
            $headers[] = 'Authorization: Bearer ' . $this->token;
        }
        $opts = [
            CURLOPT_URL => $this->baseUrl . '/v1/avatar/' . rawurlencode($jid),
            CURLOPT_HTTPGET => true,
            CURLOPT_HTTPHEADER => $headers,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_NOSIGNAL => true,
            CURLOPT_PROXY => '',
            CURLOPT_NOPROXY => '*',
            CURLOPT_CONNECTTIMEOUT_MS => (int) ceil($this->connectTimeout * 1000),
            CURLOPT_TIMEOUT_MS => (int) ceil($this->timeout * 1000),
            CURLOPT_HEADERFUNCTION => function ($ch, string $line) use (&$type, &$etag): int {
                if (stripos($line, 'content-type:') === 0) {
                    $type = trim(substr($line, 13));
                } elseif (stripos($line, 'etag:') === 0) {
                    $etag = trim(substr($line, 5));
                }
                return strlen($line);
            },
        ];
        if ($this->socketPath !== null) {
            $opts[CURLOPT_UNIX_SOCKET_PATH] = $this->socketPath;
        }
        curl_setopt_array($ch, $opts);
        $raw = curl_exec($ch);
        curl_setopt($ch, CURLOPT_HEADERFUNCTION, null);
        if ($raw === false) {
            throw new TransportException('imsidecar: GET /v1/avatar failed: ' . curl_error($ch), curl_errno($ch));
        }
        $status = (int) curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
        if ($status === 200) {
            return ['type' => $type, 'data' => (string) $raw, 'etag' => $etag];
        }
        $data = json_decode((string) $raw, true, 8);
        $err = is_array($data) && is_array($data['error'] ?? null) ? $data['error'] : [];
        if ($status === 404 && ($err['code'] ?? '') === 'not_found') {
            return null;
        }
        throw ApiException::fromResponse($status, (string) ($err['code'] ?? ''), (string) ($err['message'] ?? 'HTTP ' . $status));
    }

    /**
     * Performs one call and decodes the answer.
     *
     * @param array<string,mixed>|null $body JSON body, or null for none
     * @return array<string,mixed> the decoded JSON object; [] for 204
     */
    private function request(string $method, string $path, ?array $body = null, ?float $timeout = null): array
    {
        $headers = [
            'Accept: application/json',
            'X-Session-Id: ' . $this->sessionId,
            // Expect: 100-continue would cost a round trip (or a one-second
            // stall) on every larger message.
            'Expect:',
        ];
        if ($this->token !== null) {
            $headers[] = 'Authorization: Bearer ' . $this->token;
        }
        $payload = null;
        if ($body !== null) {
            try {
                $payload = json_encode($body, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
            } catch (\JsonException $e) {
                throw new ClientException('imsidecar: cannot encode request (strings must be UTF-8): ' . $e->getMessage(), 0, $e);
            }
            $headers[] = 'Content-Type: application/json';
        }

        $ch = $this->handle();
        $opts = [
            CURLOPT_URL => $this->baseUrl . $path,
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_HTTPHEADER => $headers,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_HEADER => false,
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_NOSIGNAL => true,
            // Loopback calls must never be routed through an http_proxy from the environment.
            CURLOPT_PROXY => '',
            CURLOPT_NOPROXY => '*',
            CURLOPT_CONNECTTIMEOUT_MS => (int) ceil($this->connectTimeout * 1000),
            CURLOPT_TIMEOUT_MS => (int) ceil(($timeout ?? $this->timeout) * 1000),
        ];
        if ($this->socketPath !== null) {
            $opts[CURLOPT_UNIX_SOCKET_PATH] = $this->socketPath;
        }
        if ($payload !== null) {
            $opts[CURLOPT_POSTFIELDS] = $payload;
        } elseif ($method === 'POST' || $method === 'PUT') {
            $opts[CURLOPT_POSTFIELDS] = '';
        }
        if ($method === 'GET') {
            $opts[CURLOPT_HTTPGET] = true;
            unset($opts[CURLOPT_CUSTOMREQUEST]);
        }
        curl_setopt_array($ch, $opts);

        $raw = curl_exec($ch);
        if ($raw === false) {
            $errno = curl_errno($ch);
            throw new TransportException(sprintf('imsidecar: %s %s failed: %s', $method, strtok($path, '?'), curl_error($ch)), $errno);
        }
        $status = (int) curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
        $raw = (string) $raw;

        if ($status >= 200 && $status < 300) {
            if ($status === 204 || $raw === '') {
                return [];
            }
            $data = json_decode($raw, true, 64);
            if (!is_array($data)) {
                throw new TransportException(sprintf('imsidecar: %s %s: HTTP %d with an undecodable body', $method, strtok($path, '?'), $status));
            }
            return $data;
        }

        $data = json_decode($raw, true, 8);
        $err = is_array($data) && is_array($data['error'] ?? null) ? $data['error'] : [];
        $code = is_string($err['code'] ?? null) ? $err['code'] : '';
        $message = is_string($err['message'] ?? null) ? $err['message'] : 'HTTP ' . $status;
        throw ApiException::fromResponse($status, $code, $message);
    }

    /** The cURL handle, reset between calls so its connection is reused. */
    private function handle(): \CurlHandle
    {
        if ($this->curl === null) {
            $ch = curl_init();
            if ($ch === false) {
                throw new TransportException('imsidecar: curl_init failed');
            }
            $this->curl = $ch;
        } else {
            curl_reset($this->curl);
        }
        return $this->curl;
    }
}
