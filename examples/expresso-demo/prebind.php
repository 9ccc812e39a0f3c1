<?php
// prebind_url of the independent web XMPP clients (strophe.php,
// converse.php): PHP asks the sidecar for a BOSH session bound to this
// PHP session's XMPP stream and hands the page {jid, sid, rid}. No
// password ever reaches the browser.
declare(strict_types=1);
require __DIR__ . '/config.php';

session_start();
header('Content-Type: application/json; charset=utf-8');
header('Cache-Control: no-store');
if (!demo_logged_in()) {
    http_response_code(401);
    echo json_encode(['error' => 'log in first']);
    exit;
}
$_SESSION['phpgw_session']['session_dla'] = time();
\Expresso\ImSidecar\Client::releaseSessionLock();
try {
    $p = demo_client()->prebind();
    echo json_encode(['jid' => $p['jid'], 'sid' => $p['sid'], 'rid' => $p['rid']], JSON_UNESCAPED_SLASHES);
} catch (\Expresso\ImSidecar\Exception\ClientException $e) {
    http_response_code(502);
    echo json_encode(['error' => $e->getMessage()]);
}
