<?php
// The page's server-side endpoints: each is a short call to the sidecar
// made by PHP with the session id. The browser never sees a password.
declare(strict_types=1);
require __DIR__ . '/config.php';

use Expresso\ImSidecar\Client;
use Expresso\ImSidecar\Exception\ApiException;
use Expresso\ImSidecar\Exception\ClientException;

session_start();
header('Content-Type: application/json; charset=utf-8');
header('Cache-Control: no-store');

function reply(int $status, array $body): never
{
    http_response_code($status);
    echo json_encode($body, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES);
    exit;
}

if (!demo_logged_in()) {
    reply(401, ['error' => ['code' => 'not_logged_in', 'message' => 'log in first']]);
}
// Keep Expresso's "last activity" fresh while the page is used.
$_SESSION['phpgw_session']['session_dla'] = time();
$im = demo_client();
$action = (string)($_GET['action'] ?? '');
$in = json_decode((string)file_get_contents('php://input'), true) ?: [];
if ($_SERVER['REQUEST_METHOD'] !== 'GET' && ($_SERVER['HTTP_X_REQUESTED_WITH'] ?? '') !== 'imsidecar-demo') {
    // A custom header a cross-site form cannot send: cheap CSRF protection.
    reply(403, ['error' => ['code' => 'forbidden', 'message' => 'missing X-Requested-With']]);
}

try {
    switch ($action) {
        case 'connect':
            Client::releaseSessionLock();
            reply(200, $im->connect());
        case 'me':
            Client::releaseSessionLock();
            reply(200, $im->me());
        case 'poll':
            // The long poll must not hold the session lock: see releaseSessionLock().
            Client::releaseSessionLock();
            $cursor = (string)($_GET['cursor'] ?? '');
            reply(200, $im->events($cursor === '' ? null : $cursor, 25));
        case 'roster':
            Client::releaseSessionLock();
            reply(200, ['items' => $im->roster()]);
        case 'send':
            Client::releaseSessionLock();
            reply(202, ['id' => $im->sendMessage((string)($in['to'] ?? ''), (string)($in['body'] ?? ''), receipt: true)]);
        case 'presence':
            Client::releaseSessionLock();
            $im->setPresence((string)($in['show'] ?? ''), (string)($in['status'] ?? ''));
            reply(200, ['ok' => true]);
        case 'chatstate':
            Client::releaseSessionLock();
            $im->chatState((string)($in['to'] ?? ''), (string)($in['state'] ?? ''));
            reply(200, ['ok' => true]);
        case 'contact':
            Client::releaseSessionLock();
            $jid = (string)($in['jid'] ?? '');
            $groups = array_values(array_filter(array_map('trim', explode(',', (string)($in['group'] ?? '')))));
            $im->setRosterItem($jid, (string)($in['name'] ?? ''), $groups);
            if (!empty($in['subscribe'])) {
                $im->subscription($jid, 'subscribe');
            }
            reply(200, ['ok' => true]);
        case 'remove':
            Client::releaseSessionLock();
            $im->removeRosterItem((string)($in['jid'] ?? ''));
            reply(200, ['ok' => true]);
        case 'subscription':
            Client::releaseSessionLock();
            $im->subscription((string)($in['jid'] ?? ''), (string)($in['action'] ?? ''));
            reply(200, ['ok' => true]);

        // ---- Group chat (XEP-0045) ----
        case 'rooms':
            Client::releaseSessionLock();
            reply(200, $im->rooms());
        case 'room_join':
            Client::releaseSessionLock();
            reply(200, $im->joinRoom((string)($in['room'] ?? ''), (string)($in['nick'] ?? ''), (string)($in['password'] ?? '')));
        case 'room_leave':
            Client::releaseSessionLock();
            $im->leaveRoom((string)($in['room'] ?? ''));
            reply(200, ['ok' => true]);
        case 'room_send':
            Client::releaseSessionLock();
            reply(202, ['id' => $im->sendMessage((string)($in['room'] ?? ''), (string)($in['body'] ?? ''), type: 'groupchat')]);
        case 'room_subject':
            Client::releaseSessionLock();
            $im->setRoomSubject((string)($in['room'] ?? ''), (string)($in['subject'] ?? ''));
            reply(200, ['ok' => true]);
        case 'history':
            // Past messages of one conversation (GET /v1/history): the
            // newest page when the window opens, older ones on demand.
            Client::releaseSessionLock();
            $q = ['with' => (string)($_GET['with'] ?? ''), 'max' => max(1, min(50, (int)($_GET['max'] ?? 30)))];
            $q['before'] = (string)($_GET['before'] ?? '');
            reply(200, $im->history($q));
        case 'avatar':
            // A contact's picture for <img src="api.php?action=avatar&jid=…&v=hash">.
            Client::releaseSessionLock();
            $av = $im->avatar((string)($_GET['jid'] ?? ''));
            if ($av === null || !str_starts_with($av['type'], 'image/')) {
                reply(404, ['error' => ['code' => 'not_found', 'message' => 'no avatar']]);
            }
            header('Cache-Control: private, max-age=300');
            header('X-Content-Type-Options: nosniff');
            header('ETag: ' . $av['etag']);
            if (($_SERVER['HTTP_IF_NONE_MATCH'] ?? '') === $av['etag']) {
                http_response_code(304);
                exit;
            }
            header('Content-Type: ' . $av['type']);
            echo $av['data'];
            exit;
    }
    reply(404, ['error' => ['code' => 'not_found', 'message' => 'unknown action']]);
} catch (ApiException $e) {
    reply($e->getStatus() >= 400 ? $e->getStatus() : 502, ['error' => ['code' => $e->getErrorCode(), 'message' => $e->getMessage()]]);
} catch (ClientException $e) {
    reply(502, ['error' => ['code' => 'sidecar_unreachable', 'message' => $e->getMessage()]]);
}
