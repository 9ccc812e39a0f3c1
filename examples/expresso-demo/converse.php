<?php
// converse.js, unchanged, on the user's persistent stream: over BOSH it
// attaches to a prebound session (authentication "prebind", prebind.php);
// over WebSocket (?transport=websocket) it logs in with SASL PLAIN as the
// session's own user, which the sidecar accepts on the strength of the
// session cookie: the "password" below is a placeholder the sidecar
// ignores. The page never sees the user's password.
declare(strict_types=1);
require __DIR__ . '/config.php';
demo_page_session();
$jid = $_SESSION['phpgw_info']['expressomail']['user']['account_lid'] . '@' . demo_domain();
$ws = ($_GET['transport'] ?? '') === 'websocket';
$settings = [
    'jid' => $jid,
    'auto_login' => true,
    'view_mode' => 'fullscreen',
    'discover_connection_methods' => false,
    'show_desktop_notifications' => false,
    'play_sounds' => false,
    'clear_cache_on_logout' => true,
    'assets_path' => dirname(demo_vendor('converse.js', '12.0.0', 'dist/converse.min.js')) . '/',
    'whitelisted_plugins' => ['imsidecar-demo'],
];
if ($ws) {
    $settings += ['authentication' => 'login', 'password' => 'not-a-password', 'websocket_url' => 'WS_URL'];
} else {
    $settings += ['authentication' => 'prebind', 'prebind_url' => 'prebind.php', 'bosh_service_url' => demo_bosh_url()];
}
?><!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>converse.js on imsidecar</title>
<link rel="stylesheet" href="<?= h(demo_vendor('converse.js', '12.0.0', 'dist/converse.min.css')) ?>">
<script src="<?= h(demo_vendor('converse.js', '12.0.0', 'dist/converse.min.js')) ?>"></script>
</head>
<body class="converse-fullscreen">
<div id="conversejs-bg"></div>
<script>
const settings = <?= json_encode($settings, JSON_UNESCAPED_SLASHES) ?>;
if (settings.websocket_url) {
  settings.websocket_url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/im/xmpp-websocket';
}
// Exposes converse's API to the browser test (and the console).
converse.plugins.add('imsidecar-demo', { initialize() { window.converseAPI = this._converse.api; } });
converse.initialize(settings);
</script>
</body>
</html>
