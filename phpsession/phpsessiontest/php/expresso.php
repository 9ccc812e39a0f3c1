<?php
// Fills $_SESSION the way Expresso Livre does after a login: strings in
// ISO-8859-1, the user array under phpgw_info.expressomail.user, and enough
// preferences and server configuration to make the session realistically big.
// env: EX_USER, EX_PASSWORD, EX_FULLNAME (UTF-8), EX_EMAIL, EX_DOMAIN, EX_PAD (approx bytes)
// EX_USER_IN: where the login is: "" (expressomail.user and session_lid),
//   "lid" (session_lid only), "wallet" (wallet.user, as 2.5.x's login writes
//   it, plus session_lid), "jabberit" (jabberit_messenger.user_jabber only).
// EX_MCRYPT=1: Expresso with mcrypt_enabled: the app-session password is
//   bin2hex of 3DES ciphertext (key from the kp3 cookie, the session id and
//   the site's encryption key), and ExpressoMail has not copied the
//   plaintext into the session.
// EX_DLA: session_dla (unix time; default now).
$latin = fn(string $s): string => mb_convert_encoding($s, 'ISO-8859-1', 'UTF-8');
$user = getenv('EX_USER');
$pass = getenv('EX_PASSWORD');
$where = getenv('EX_USER_IN') ?: '';
$mcrypt = getenv('EX_MCRYPT') === '1';
$content = base64_encode($latin($pass));
if ($mcrypt) {
    // class.crypto.inc.php: serialize, addslashes, mcrypt 3DES (zero padded), bin2hex.
    $kp3 = bin2hex(random_bytes(16));
    $key = substr(md5($kp3 . session_id() . 'site-encryption-key'), 0, 24);
    $data = addslashes(serialize($content));
    $data = str_pad($data, intdiv(strlen($data) + 7, 8) * 8, "\0");
    $content = bin2hex(openssl_encrypt($data, 'des-ede3-cbc', $key, OPENSSL_RAW_DATA | OPENSSL_ZERO_PADDING, '12345678'));
}
$_SESSION['phpgw_session'] = [
    'session_id' => session_id(),
    'session_lid' => $where === 'jabberit' ? '' : $user . '@' . getenv('EX_DOMAIN'),
    'session_ip' => '127.0.0.1',
    'session_logintime' => time(),
    'session_dla' => (int)(getenv('EX_DLA') ?: time()),
    'session_action' => '/expressoMail/index.php',
    'phpgw_app_sessions' => ['phpgwapi' => ['password' => ['content' => $content]]],
];
if ($where === 'wallet') {
    $_SESSION['wallet'] = ['user' => ['uid' => $user, 'uidNumber' => 1000, 'password' => $latin($pass),
        'cn' => $latin(getenv('EX_FULLNAME')), 'mail' => getenv('EX_EMAIL')]];
}
$prefs = [];
$pad = (int)(getenv('EX_PAD') ?: 0);
for ($i = 0; strlen(serialize($prefs)) < $pad; $i++) {
    $prefs['pref_' . $i] = ['value' => $latin('Configuração nº ' . $i), 'enabled' => $i % 2 === 0, 'order' => $i, 'ratio' => $i / 7];
}
if ($where !== '') {
    $_SESSION['phpgw_info'] = ['expressomail' => ['server' => ['sessions_timeout' => 14400, 'charset' => 'iso-8859-1']]];
    if ($where === 'jabberit') {
        $_SESSION['phpgw_info']['jabberit_messenger'] = ['user_jabber' => $user, 'passwd' => $latin($pass),
            'name_jabberit' => getenv('EX_DOMAIN'), 'photo' => []];
    }
    return;
}
$_SESSION['phpgw_info'] = [
    'expressomail' => [
        'user' => [
            'account_id' => 1000,
            'account_lid' => $user,
            'passwd' => $mcrypt ? null : $latin($pass),
            'kp3' => $mcrypt ? $kp3 : null,
            'fullname' => $latin(getenv('EX_FULLNAME')),
            'firstname' => $latin(explode(' ', getenv('EX_FULLNAME'))[0]),
            'email' => getenv('EX_EMAIL'),
            'preferences' => $prefs,
        ],
        'server' => ['sessions_timeout' => 14400, 'default_domain' => getenv('EX_DOMAIN'), 'charset' => 'iso-8859-1'],
    ],
];
