<?php
declare(strict_types=1);
require __DIR__ . '/config.php';
session_start();
header('Location: ' . (demo_logged_in() ? 'im.php' : 'login.php'));
