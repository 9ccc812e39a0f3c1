<?php
// Logout as Expresso does it: the session is destroyed. The sidecar notices
// on its next re-check and takes the user offline; we also tell it at once.
declare(strict_types=1);
require __DIR__ . '/config.php';
session_start();
if (demo_logged_in()) {
    try {
        demo_client()->disconnect();
    } catch (\Throwable $e) {
        error_log('imsidecar disconnect: ' . $e->getMessage());
    }
}
$_SESSION = [];
session_destroy();
header('Location: login.php');
