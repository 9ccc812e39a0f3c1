<?php

declare(strict_types=1);

namespace Expresso\ImSidecar\Tests;

use Expresso\ImSidecar\Client;
use Expresso\ImSidecar\Exception\ApiException;
use Expresso\ImSidecar\Exception\ClientException;
use Expresso\ImSidecar\Exception\NotConnectedException;
use Expresso\ImSidecar\Exception\RateLimitedException;
use Expresso\ImSidecar\Exception\SessionException;
use Expresso\ImSidecar\Exception\TransportException;
use Expresso\ImSidecar\Exception\UnavailableException;
use Expresso\ImSidecar\Exception\XmppException;
use PHPUnit\Framework\TestCase;

/** Tests that need no daemon. */
final class ClientUnitTest extends TestCase
{
    /** @return iterable<string,array{int,string,class-string}> */
    public static function statusProvider(): iterable
    {
        yield 'bad request' => [400, 'bad_request', ApiException::class];
        yield 'session' => [401, 'session_expired', SessionException::class];
        yield 'not found' => [404, 'not_found', ApiException::class];
        yield 'not connected' => [409, 'not_connected', NotConnectedException::class];
        yield 'nick in use' => [409, 'nick_in_use', ApiException::class];
        yield 'room password' => [403, 'room_password_required', ApiException::class];
        yield 'too large' => [413, 'too_large', ApiException::class];
        yield 'rate limited' => [429, 'rate_limited', RateLimitedException::class];
        yield 'internal' => [500, 'internal', ApiException::class];
        yield 'auth failed' => [502, 'xmpp_auth_failed', XmppException::class];
        yield 'shutting down' => [503, 'shutting_down', UnavailableException::class];
    }

    /** @dataProvider statusProvider */
    public function testFromResponseMapsStatus(int $status, string $code, string $class): void
    {
        $e = ApiException::fromResponse($status, $code, 'why');
        $this->assertSame($class, $e::class);
        $this->assertSame($status, $e->getStatus());
        $this->assertSame($code, $e->getErrorCode());
        $this->assertStringContainsString('why', $e->getMessage());
        $this->assertInstanceOf(ClientException::class, $e);
    }

    /** @return iterable<string,array{string,string|null,string|null}> */
    public static function badArgsProvider(): iterable
    {
        yield 'empty session id' => ['', null, null];
        yield 'header injection in id' => ["abc\r\nX-Evil: 1", null, null];
        yield 'bad endpoint' => ['abc', 'ftp://127.0.0.1', null];
        yield 'endpoint with a path' => ['abc', 'http://127.0.0.1:8765/v1', null];
        yield 'empty socket' => ['abc', 'unix:', null];
        yield 'missing token file' => ['abc', null, '/nonexistent/imsidecar/token'];
    }

    /** @dataProvider badArgsProvider */
    public function testConstructorRejects(string $sid, ?string $endpoint, ?string $tokenFile): void
    {
        $this->expectException(ClientException::class);
        new Client($sid, $endpoint ?? Client::DEFAULT_ENDPOINT, tokenFile: $tokenFile);
    }

    public function testMissingUnixSocketIsTransportError(): void
    {
        $c = new Client('abcdef0123456789abcdef', 'unix:' . sys_get_temp_dir() . '/imsidecar-none-' . bin2hex(random_bytes(4)) . '.sock');
        try {
            $c->me();
            $this->fail('a call to a missing socket succeeded');
        } catch (TransportException $e) {
            $this->assertSame(CURLE_COULDNT_CONNECT, $e->getCurlErrno());
        }
    }

    public function testEventsRejectsWaitOutOfRange(): void
    {
        $this->expectException(ClientException::class);
        (new Client('abcdef0123456789abcdef'))->events(null, Client::MAX_WAIT + 1);
    }

    public function testNonUtf8BodyIsRefusedBeforeSending(): void
    {
        // An ISO-8859-1 string straight from an Expresso page.
        $c = new Client('abcdef0123456789abcdef', 'http://127.0.0.1:9');
        $this->expectException(ClientException::class);
        $this->expectExceptionMessage('UTF-8');
        $c->sendMessage('bob@example.test', "Ol\xE1");
    }

    /**
     * Shows why releaseSessionLock() exists: while a request holds the
     * session open, PHP's files handler keeps an exclusive flock on it, so
     * every other request of the same user would block in session_start().
     *
     * @runInSeparateProcess
     * @preserveGlobalState disabled
     */
    public function testReleaseSessionLockDropsTheFlock(): void
    {
        $dir = sys_get_temp_dir() . '/imsidecar-php-' . bin2hex(random_bytes(4));
        $this->assertTrue(mkdir($dir, 0700));
        ini_set('session.save_handler', 'files');
        ini_set('session.save_path', $dir);
        ini_set('session.use_cookies', '0');
        ini_set('session.use_only_cookies', '0');
        ini_set('session.use_strict_mode', '0');
        ini_set('session.cache_limiter', '');
        $id = 'lock' . bin2hex(random_bytes(12));
        session_id($id);
        $this->assertTrue(session_start());
        $_SESSION['x'] = 1;
        $file = "$dir/sess_$id";
        try {
            $this->assertFalse($this->canLock($file), 'PHP holds the session lock during the request');
            Client::releaseSessionLock();
            $this->assertSame(PHP_SESSION_NONE, session_status());
            $this->assertTrue($this->canLock($file), 'the lock is free after releaseSessionLock()');
            Client::releaseSessionLock(); // harmless without a session
            $this->assertSame(1, $_SESSION['x'], '$_SESSION stays readable');
        } finally {
            if (session_status() === PHP_SESSION_ACTIVE) {
                session_write_close();
            }
            @unlink($file);
            @rmdir($dir);
        }
    }

    private function canLock(string $file): bool
    {
        $fh = fopen($file, 'r');
        $this->assertNotFalse($fh);
        $ok = flock($fh, LOCK_EX | LOCK_NB);
        if ($ok) {
            flock($fh, LOCK_UN);
        }
        fclose($fh);
        return $ok;
    }
}
