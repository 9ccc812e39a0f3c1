<?php
// Fills $_SESSION the way Expresso Livre does after a login: strings in
// ISO-8859-1, the user array under phpgw_info.expressomail.user, and enough
// preferences and server configuration to make the session realistically big.
// env: EX_USER, EX_PASSWORD, EX_FULLNAME (UTF-8), EX_EMAIL, EX_DOMAIN, EX_PAD (approx bytes)
$latin = fn(string $s): string => mb_convert_encoding($s, 'ISO-8859-1', 'UTF-8');
$user = getenv('EX_USER');
$pass = getenv('EX_PASSWORD');
$_SESSION['phpgw_session'] = [
    'session_id' => session_id(),
    'session_lid' => $user . '@' . getenv('EX_DOMAIN'),
    'session_ip' => '127.0.0.1',
    'session_logintime' => time(),
    'session_dla' => time(),
    'session_action' => '/expressoMail/index.php',
    'phpgw_app_sessions' => ['phpgwapi' => ['password' => ['content' => base64_encode($latin($pass))]]],
];
$prefs = [];
$pad = (int)(getenv('EX_PAD') ?: 0);
for ($i = 0; strlen(serialize($prefs)) < $pad; $i++) {
    $prefs['pref_' . $i] = ['value' => $latin('Configuração nº ' . $i), 'enabled' => $i % 2 === 0, 'order' => $i, 'ratio' => $i / 7];
}
$_SESSION['phpgw_info'] = [
    'expressomail' => [
        'user' => [
            'account_id' => 1000,
            'account_lid' => $user,
            'passwd' => $latin($pass),
            'fullname' => $latin(getenv('EX_FULLNAME')),
            'firstname' => $latin(explode(' ', getenv('EX_FULLNAME'))[0]),
            'email' => getenv('EX_EMAIL'),
            'preferences' => $prefs,
        ],
        'server' => ['sessions_timeout' => 14400, 'default_domain' => getenv('EX_DOMAIN'), 'charset' => 'iso-8859-1'],
    ],
];
