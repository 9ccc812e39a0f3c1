<?php
// A login page that leaves behind the session Expresso Livre would: the
// keys the sidecar's "expresso" profile reads, strings in ISO-8859-1.
declare(strict_types=1);
require __DIR__ . '/config.php';
session_start();

$error = '';
if ($_SERVER['REQUEST_METHOD'] === 'POST') {
    $user = (string)($_POST['user'] ?? '');
    $pass = (string)($_POST['password'] ?? '');
    $users = demo_users();
    if (isset($users[$user]) && hash_equals($users[$user]['password'], $pass)) {
        session_regenerate_id(true);
        $latin = fn(string $s): string => mb_convert_encoding($s, DEMO_CHARSET, 'UTF-8');
        $_SESSION = [];
        $_SESSION['phpgw_session'] = [
            'session_id' => session_id(),
            'session_lid' => $user . '@' . demo_domain(),
            'session_ip' => $_SERVER['REMOTE_ADDR'] ?? '',
            'session_logintime' => time(),
            'session_dla' => time(),
        ];
        $_SESSION['phpgw_info']['expressomail']['user'] = [
            'account_lid' => $user,
            'passwd' => $latin($pass),
            'fullname' => $latin($users[$user]['fullname']),
            'email' => $user . '@' . demo_domain(),
        ];
        header('Location: im.php');
        exit;
    }
    $error = 'Wrong user or password.';
}
?><!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Expresso demo — login</title>
<link rel="stylesheet" href="style.css"></head>
<body class="login">
<form method="post" class="card" id="login-form">
  <h1>Expresso <span>demo</span></h1>
  <?php if ($error): ?><p class="error" id="login-error"><?= h($error) ?></p><?php endif ?>
  <label>User <input name="user" id="user" autocomplete="username" required autofocus></label>
  <label>Password <input name="password" id="password" type="password" autocomplete="current-password" required></label>
  <button type="submit" id="login">Log in</button>
  <p class="hint">Demo users are printed by <code>make demo</code>.</p>
</form>
</body></html>
