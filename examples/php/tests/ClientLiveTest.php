<?php

declare(strict_types=1);

namespace Expresso\ImSidecar\Tests;

use Expresso\ImSidecar\Client;
use Expresso\ImSidecar\Exception\ApiException;
use Expresso\ImSidecar\Exception\NotConnectedException;
use Expresso\ImSidecar\Exception\SessionException;
use Expresso\ImSidecar\Exception\TransportException;
use PHPUnit\Framework\TestCase;

/**
 * Runs the client against a live imsidecar daemon, a real Prosody and real
 * PHP sessions. The Go test TestPHPClient (sidecar/e2e_test.go) sets them up
 * and passes:
 *
 *   IMSIDECAR_URL                 http://127.0.0.1:PORT or unix:/path
 *   IMSIDECAR_TOKEN_FILE          bearer token file ("" when the daemon has none)
 *   IMSIDECAR_TEST_DOMAIN         XMPP domain
 *   IMSIDECAR_TEST_USER_ALICE     localpart of the first user
 *   IMSIDECAR_TEST_USER_BOB       localpart of the second user
 *   IMSIDECAR_TEST_SID_ALICE      PHP session id of a logged-in session of alice
 *   IMSIDECAR_TEST_SID_BOB        same for bob
 *   IMSIDECAR_TEST_SID_CAROL      a logged-in session that is never connected
 *   IMSIDECAR_TEST_MAX_BODY       (optional) request body size the daemon must refuse
 *
 * Every test makes its own messages unique, so the suite may run again
 * against the same daemon.
 */
final class ClientLiveTest extends TestCase
{
    /** @var array<string,string> */
    private static array $env = [];

    private Client $alice;
    private Client $bob;
    private string $aliceJid;
    private string $bobJid;
    private string $aliceCursor = '';
    private string $bobCursor = '';

    public static function setUpBeforeClass(): void
    {
        $need = [
            'IMSIDECAR_URL', 'IMSIDECAR_TEST_DOMAIN', 'IMSIDECAR_TEST_USER_ALICE', 'IMSIDECAR_TEST_USER_BOB',
            'IMSIDECAR_TEST_SID_ALICE', 'IMSIDECAR_TEST_SID_BOB', 'IMSIDECAR_TEST_SID_CAROL',
        ];
        foreach ($need as $name) {
            $v = getenv($name);
            if ($v === false || $v === '') {
                self::fail("$name is not set: this suite runs against a live daemon; start it with `go test ./sidecar -run TestPHPClient`");
            }
            self::$env[$name] = $v;
        }
        self::$env['IMSIDECAR_TOKEN_FILE'] = (string) getenv('IMSIDECAR_TOKEN_FILE');
        self::$env['IMSIDECAR_TEST_MAX_BODY'] = (string) getenv('IMSIDECAR_TEST_MAX_BODY');
    }

    protected function setUp(): void
    {
        $this->alice = $this->client(self::$env['IMSIDECAR_TEST_SID_ALICE']);
        $this->bob = $this->client(self::$env['IMSIDECAR_TEST_SID_BOB']);
        $domain = self::$env['IMSIDECAR_TEST_DOMAIN'];
        $this->aliceJid = self::$env['IMSIDECAR_TEST_USER_ALICE'] . '@' . $domain;
        $this->bobJid = self::$env['IMSIDECAR_TEST_USER_BOB'] . '@' . $domain;
        $this->aliceCursor = $this->alice->connect()['cursor'];
        $this->bobCursor = $this->bob->connect()['cursor'];
    }

    private function client(string $sid, ?string $endpoint = null): Client
    {
        $tokenFile = self::$env['IMSIDECAR_TOKEN_FILE'];
        return new Client(
            $sid,
            $endpoint ?? self::$env['IMSIDECAR_URL'],
            tokenFile: $tokenFile !== '' ? $tokenFile : null,
            connectTimeout: 2.0,
            timeout: 10.0,
        );
    }

    private static function bare(string $jid): string
    {
        return explode('/', $jid, 2)[0];
    }

    /**
     * Polls $c from $cursor until an event satisfies $match, advancing the
     * cursor past everything read. Fails after $timeout seconds.
     *
     * @param callable(array<string,mixed>):bool $match
     * @return array<string,mixed> the matching event
     */
    private function waitFor(Client $c, string &$cursor, callable $match, string $what, float $timeout = 15.0): array
    {
        $deadline = microtime(true) + $timeout;
        $seen = [];
        while (($left = $deadline - microtime(true)) > 0) {
            $page = $c->events($cursor, max(1, min(5, (int) ceil($left))));
            $this->assertIsString($page['cursor']);
            $cursor = $page['cursor'];
            foreach ($page['events'] as $ev) {
                $seen[] = $ev['event'] ?? '?';
                if ($match($ev)) {
                    return $ev;
                }
            }
        }
        $this->fail("timed out after {$timeout}s waiting for $what; saw events: " . implode(',', $seen));
    }

    /** Makes alice and bob mutual contacts (idempotent). */
    private function befriend(): void
    {
        $sub = fn (array $items, string $jid): string => array_values(array_filter($items, fn ($i) => $i['jid'] === $jid))[0]['subscription'] ?? 'none';
        if ($sub($this->alice->roster(), $this->bobJid) === 'both' && $sub($this->bob->roster(), $this->aliceJid) === 'both') {
            return;
        }
        $this->alice->setRosterItem($this->bobJid, 'Bob', ['Friends']);
        $this->alice->subscription($this->bobJid, 'subscribe');
        $this->waitFor($this->bob, $this->bobCursor, fn ($e) => $e['event'] === 'subscription'
            && self::bare($e['from']) === $this->aliceJid && $e['type'] === 'subscribe', 'subscribe from alice');
        $this->bob->subscription($this->aliceJid, 'approve');
        $this->bob->setRosterItem($this->aliceJid, 'Alice', ['Friends']);
        $this->bob->subscription($this->aliceJid, 'subscribe');
        $this->waitFor($this->alice, $this->aliceCursor, fn ($e) => $e['event'] === 'subscription'
            && self::bare($e['from']) === $this->bobJid && $e['type'] === 'subscribe', 'subscribe from bob');
        $this->alice->subscription($this->bobJid, 'approve');

        $deadline = microtime(true) + 10;
        while ($sub($this->alice->roster(), $this->bobJid) !== 'both' || $sub($this->bob->roster(), $this->aliceJid) !== 'both') {
            if (microtime(true) > $deadline) {
                $this->fail('alice and bob did not become mutual contacts: ' . json_encode([$this->alice->roster(), $this->bob->roster()]));
            }
            usleep(100_000);
        }
    }

    public function testConnectIsIdempotent(): void
    {
        $first = $this->alice->connect(['show' => '', 'status' => 'via PHPUnit', 'priority' => 1]);
        $second = $this->alice->connect();
        $this->assertSame('online', $first['state']);
        $this->assertSame($first['jid'], $second['jid'], 'a second connect must reuse the stream');
        $this->assertStringStartsWith($this->aliceJid . '/', $first['jid']);
        $this->assertNotSame('', $first['cursor']);
    }

    public function testPrebind(): void
    {
        $a = $this->alice->prebind();
        $b = $this->alice->prebind();
        $this->assertStringStartsWith($this->aliceJid . '/', $a['jid']);
        $this->assertSame($a['jid'], $b['jid'], 'prebind must attach to the one stream of the session');
        $this->assertMatchesRegularExpression('/^[0-9a-f]{40}$/', $a['sid']);
        $this->assertNotSame($a['sid'], $b['sid'], 'each page gets its own BOSH session');
        $this->assertIsInt($a['rid']);
        $this->assertSame('/http-bind', $a['url']);
        // The e2e harness gives every user the password <login>-pw.
        $this->assertStringNotContainsString(self::$env['IMSIDECAR_TEST_USER_ALICE'] . '-pw', json_encode($a));
    }

    public function testMe(): void
    {
        $me = $this->alice->me();
        $this->assertSame(self::$env['IMSIDECAR_TEST_USER_ALICE'], $me['user']);
        $this->assertStringStartsWith($this->aliceJid . '/', $me['jid']);
        $this->assertSame('online', $me['state']);
        $this->assertArrayHasKey('fullname', $me);
        $this->assertArrayHasKey('email', $me);
        $this->assertArrayNotHasKey('password', $me);
    }

    public function testRosterAndMutualPresence(): void
    {
        $this->befriend();
        $items = array_values(array_filter($this->alice->roster(), fn ($i) => $i['jid'] === $this->bobJid));
        $this->assertCount(1, $items);
        $this->assertSame('Bob', $items[0]['name']);
        $this->assertSame(['Friends'], $items[0]['groups']);
        $this->assertSame('both', $items[0]['subscription']);

        // Bob is online, so alice's roster shows at least one resource of his.
        $deadline = microtime(true) + 10;
        do {
            $items = array_values(array_filter($this->alice->roster(), fn ($i) => $i['jid'] === $this->bobJid));
            if (($items[0]['presence'] ?? []) !== []) {
                break;
            }
            usleep(100_000);
        } while (microtime(true) < $deadline);
        $this->assertNotEmpty($items[0]['presence'], 'bob is online but alice sees no presence');

        // Renaming keeps the subscription.
        $this->alice->setRosterItem($this->bobJid, 'Roberto', ['Friends', 'Work']);
        $this->waitFor($this->alice, $this->aliceCursor, fn ($e) => $e['event'] === 'roster'
            && $e['item']['jid'] === $this->bobJid && $e['item']['name'] === 'Roberto', 'roster push for the rename');
        $items = array_values(array_filter($this->alice->roster(), fn ($i) => $i['jid'] === $this->bobJid));
        $this->assertSame('Roberto', $items[0]['name']);
        $this->assertEqualsCanonicalizing(['Friends', 'Work'], $items[0]['groups']);
        $this->assertSame('both', $items[0]['subscription']);
    }

    public function testPresenceIsSeenByContact(): void
    {
        $this->befriend();
        $status = 'Almoço — volto já ' . bin2hex(random_bytes(3));
        $this->alice->setPresence('away', $status, 5);
        $ev = $this->waitFor($this->bob, $this->bobCursor, fn ($e) => $e['event'] === 'presence'
            && self::bare($e['from']) === $this->aliceJid && ($e['status'] ?? '') === $status, 'alice away');
        $this->assertSame('available', $ev['type']);
        $this->assertSame('away', $ev['show']);
        $this->assertSame(5, $ev['priority']);

        $this->alice->setPresence('', '', 0);
        $ev = $this->waitFor($this->bob, $this->bobCursor, fn ($e) => $e['event'] === 'presence'
            && self::bare($e['from']) === $this->aliceJid && ($e['show'] ?? '') === '' && $e['type'] === 'available', 'alice available');
        $this->assertSame('', $ev['status'] ?? '');
    }

    public function testMessageBothWaysWithReceipt(): void
    {
        $this->befriend();
        $id = 'php-' . bin2hex(random_bytes(6));
        $body = "Olá, Bob! ✓ çãé <b>&amp;</b> $id";
        $this->assertSame($id, $this->alice->sendMessage($this->bobJid, $body, 'chat', $id, 'thread-1', true));

        $msg = $this->waitFor($this->bob, $this->bobCursor, fn ($e) => $e['event'] === 'message' && ($e['id'] ?? '') === $id, "message $id");
        $this->assertSame($body, $msg['body']);
        $this->assertSame('chat', $msg['type']);
        $this->assertSame('thread-1', $msg['thread']);
        $this->assertSame($this->aliceJid, self::bare($msg['from']));

        $rcpt = $this->waitFor($this->alice, $this->aliceCursor, fn ($e) => $e['event'] === 'receipt' && $e['id'] === $id, "receipt for $id");
        $this->assertSame($this->bobJid, self::bare($rcpt['from']));

        // And back, with a sidecar-made id.
        $reply = 'reply to ' . $id;
        $replyId = $this->bob->sendMessage($this->aliceJid, $reply);
        $this->assertNotSame('', $replyId);
        $msg = $this->waitFor($this->alice, $this->aliceCursor, fn ($e) => $e['event'] === 'message' && ($e['body'] ?? '') === $reply, 'reply');
        $this->assertSame($replyId, $msg['id']);
        $this->assertSame($this->bobJid, self::bare($msg['from']));
    }

    public function testRoomConversation(): void
    {
        $room = 'php-sala-' . bin2hex(random_bytes(3));
        $joined = $this->alice->joinRoom($room, 'Alice');
        $this->assertTrue($joined['created']);
        $this->assertSame('Alice', $joined['nick']);
        $this->assertSame('owner', $joined['occupants'][0]['affiliation']);
        $roomJid = $joined['jid'];

        // Bob joins with his full name as the nick; Alice's nick is refused.
        try {
            $this->bob->joinRoom($room, 'Alice');
            $this->fail('joining with a nick in use succeeded');
        } catch (ApiException $e) {
            $this->assertSame(409, $e->getStatus());
            $this->assertSame('nick_in_use', $e->getErrorCode());
        }
        $bobJoin = $this->bob->joinRoom($roomJid);
        $this->assertFalse($bobJoin['created']);
        $this->assertCount(2, $bobJoin['occupants']);
        $rooms = $this->bob->rooms();
        $this->assertNotSame('', $rooms['service']);
        $this->assertContains($roomJid, array_column($rooms['joined'], 'jid'));

        $ev = $this->waitFor($this->alice, $this->aliceCursor, fn ($e) => $e['event'] === 'room' && $e['room'] === $roomJid
            && $e['nick'] === $bobJoin['nick'] && $e['type'] === 'available', 'bob in the room');
        $this->assertSame('participant', $ev['role']);

        $id = $this->alice->sendMessage($roomJid, 'Olá, sala! ✓', 'groupchat');
        $msg = $this->waitFor($this->bob, $this->bobCursor, fn ($e) => $e['event'] === 'message' && ($e['id'] ?? '') === $id, 'room message');
        $this->assertSame('groupchat', $msg['type']);
        $this->assertSame($roomJid, $msg['room']);
        $this->assertSame('Alice', $msg['nick']);
        $echo = $this->waitFor($this->alice, $this->aliceCursor, fn ($e) => $e['event'] === 'message' && ($e['id'] ?? '') === $id, 'echo');
        $this->assertTrue($echo['own']);

        $this->alice->setRoomSubject($room, 'Pauta');
        $this->waitFor($this->bob, $this->bobCursor, fn ($e) => $e['event'] === 'message' && ($e['subject'] ?? '') === 'Pauta', 'subject');

        $this->bob->leaveRoom($roomJid);
        $this->waitFor($this->alice, $this->aliceCursor, fn ($e) => $e['event'] === 'room' && $e['room'] === $roomJid
            && $e['nick'] === $bobJoin['nick'] && $e['type'] === 'unavailable', 'bob leaves');
        $this->alice->leaveRoom($roomJid);
        $this->assertSame([], $this->alice->rooms()['joined']);
    }

    public function testHistory(): void
    {
        $this->befriend();
        $id = 'hist-' . bin2hex(random_bytes(6));
        $this->alice->sendMessage($this->bobJid, "archived $id", 'chat', $id);
        $this->waitFor($this->bob, $this->bobCursor, fn ($e) => $e['event'] === 'message' && ($e['id'] ?? '') === $id, "message $id");
        $page = $this->bob->history(['with' => $this->aliceJid, 'before' => '', 'max' => 5]);
        $ids = array_column($page['messages'], 'id');
        $this->assertContains($id, $ids);
        $this->assertIsBool($page['complete']);
        $this->assertNotSame('', $page['first']);
        try {
            $this->bob->history(['max' => 1000]);
            $this->fail('max=1000 accepted');
        } catch (ApiException $e) {
            $this->assertSame(400, $e->getStatus());
            $this->assertSame('bad_request', $e->getErrorCode());
        }
        $this->assertNull($this->bob->avatar($this->aliceJid));
    }

    public function testChatStates(): void
    {
        $this->befriend();
        foreach (['composing', 'paused', 'active'] as $state) {
            $this->alice->chatState($this->bobJid, $state);
            $ev = $this->waitFor($this->bob, $this->bobCursor, fn ($e) => $e['event'] === 'chatstate'
                && self::bare($e['from']) === $this->aliceJid && $e['state'] === $state, "chat state $state");
            $this->assertSame($state, $ev['state']);
        }
    }

    public function testEventsCursorResume(): void
    {
        $this->befriend();
        $start = $this->bobCursor;
        $ids = [];
        for ($i = 0; $i < 3; $i++) {
            $ids[] = $this->alice->sendMessage($this->bobJid, "resume $i", 'chat', 'resume-' . bin2hex(random_bytes(6)));
        }
        // Read until all three arrived, remembering the cursor of each.
        $cursorOf = [];
        $deadline = microtime(true) + 15;
        while (count($cursorOf) < 3 && microtime(true) < $deadline) {
            $page = $this->bob->events($this->bobCursor, 2);
            $this->assertTrue($page['recovered']);
            foreach ($page['events'] as $ev) {
                if ($ev['event'] === 'message' && in_array($ev['id'] ?? '', $ids, true)) {
                    $cursorOf[$ev['id']] = $ev['cursor'];
                }
            }
            $this->bobCursor = $page['cursor'];
        }
        $this->assertSame($ids, array_keys($cursorOf), 'messages arrive once each, in order');

        // The old cursor was never acknowledged: the same events come back.
        $again = [];
        $cursor = $start;
        do {
            $page = $this->bob->events($cursor, 0, 2);
            $this->assertTrue($page['recovered']);
            foreach ($page['events'] as $ev) {
                if ($ev['event'] === 'message' && in_array($ev['id'] ?? '', $ids, true)) {
                    $again[$ev['id']] = $ev['cursor'];
                }
            }
            $cursor = $page['cursor'];
        } while ($page['events'] !== [] && $cursor !== $this->bobCursor);
        $this->assertSame($cursorOf, $again, 'a retry with the old cursor returns the same events with the same cursors');

        // Past the acknowledged cursor they are gone.
        $page = $this->bob->events($this->bobCursor, 1);
        foreach ($page['events'] as $ev) {
            $this->assertNotContains($ev['id'] ?? '', $ids);
        }
    }

    public function testUnknownSessionThrowsSessionException(): void
    {
        $ghost = $this->client(bin2hex(random_bytes(16)));
        try {
            $ghost->me();
            $this->fail('me() with an unknown session succeeded');
        } catch (SessionException $e) {
            $this->assertSame(401, $e->getStatus());
            $this->assertSame('session_not_found', $e->getErrorCode());
        }
    }

    public function testNotConnectedThrowsNotConnectedException(): void
    {
        $carol = $this->client(self::$env['IMSIDECAR_TEST_SID_CAROL']);
        try {
            $carol->sendMessage($this->aliceJid, 'never sent');
            $this->fail('sendMessage() without connect() succeeded');
        } catch (NotConnectedException $e) {
            $this->assertSame(409, $e->getStatus());
            $this->assertSame('not_connected', $e->getErrorCode());
        }
    }

    public function testOversizedBodyThrowsTooLarge(): void
    {
        $size = (int) (self::$env['IMSIDECAR_TEST_MAX_BODY'] ?: 300_000);
        try {
            $this->alice->sendMessage($this->bobJid, str_repeat('x', $size));
            $this->fail("a $size-byte message was accepted");
        } catch (ApiException $e) {
            $this->assertSame(ApiException::class, $e::class);
            $this->assertSame(413, $e->getStatus());
            $this->assertSame('too_large', $e->getErrorCode());
        }
        // The client (and its kept-alive connection) still works afterwards.
        $this->assertSame('online', $this->alice->me()['state']);
    }

    public function testBadRequestThrowsApiException(): void
    {
        try {
            $this->alice->chatState($this->bobJid, 'dancing');
            $this->fail('an invalid chat state was accepted');
        } catch (ApiException $e) {
            $this->assertSame(ApiException::class, $e::class);
            $this->assertSame(400, $e->getStatus());
            $this->assertSame('bad_request', $e->getErrorCode());
        }
    }

    public function testDeadPortThrowsTransportException(): void
    {
        $srv = stream_socket_server('tcp://127.0.0.1:0');
        $this->assertNotFalse($srv);
        $addr = stream_socket_get_name($srv, false);
        fclose($srv); // nobody listens there any more
        $dead = $this->client(self::$env['IMSIDECAR_TEST_SID_ALICE'], 'http://' . $addr);
        try {
            $dead->me();
            $this->fail('a call to a dead port succeeded');
        } catch (TransportException $e) {
            $this->assertSame(CURLE_COULDNT_CONNECT, $e->getCurlErrno());
            $this->assertFalse($e->isTimeout());
        }
    }

    public function testDisconnectTakesBobOffline(): void
    {
        $this->befriend();
        $this->bob->disconnect();
        $this->waitFor($this->alice, $this->aliceCursor, fn ($e) => $e['event'] === 'presence'
            && self::bare($e['from']) === $this->bobJid && $e['type'] === 'unavailable', 'bob unavailable');
        try {
            $this->bob->sendMessage($this->aliceJid, 'after disconnect');
            $this->fail('sendMessage() after disconnect() succeeded');
        } catch (NotConnectedException $e) {
            $this->assertSame('not_connected', $e->getErrorCode());
        }
        $this->assertSame('online', $this->bob->connect()['state']);
        $this->waitFor($this->alice, $this->aliceCursor, fn ($e) => $e['event'] === 'presence'
            && self::bare($e['from']) === $this->bobJid && $e['type'] === 'available', 'bob back online');
    }
}
