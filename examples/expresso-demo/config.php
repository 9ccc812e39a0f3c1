<?php
// Configuration of the demo, from the environment (see examples/README.md).
declare(strict_types=1);

spl_autoload_register(function (string $class): void {
    $prefix = 'Expresso\\ImSidecar\\';
    if (str_starts_with($class, $prefix)) {
        require __DIR__ . '/../php/src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    }
});

// Expresso's session cookie is "sessionid"; its sessions are ISO-8859-1.
ini_set('session.use_strict_mode', '1');
ini_set('session.cookie_httponly', '1');
ini_set('session.cookie_samesite', 'Lax');
session_name('sessionid');

const DEMO_CHARSET = 'ISO-8859-1';

function demo_env(string $name, string $default = ''): string
{
    $v = getenv($name);
    return ($v === false || $v === '') ? $default : $v;
}

/** @return array<string, array{password: string, fullname: string}> demo users from DEMO_USERS_FILE (user:password:Full Name) */
function demo_users(): array
{
    $users = [];
    $file = demo_env('DEMO_USERS_FILE', __DIR__ . '/users.txt');
    foreach (is_readable($file) ? file($file, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) : [] as $line) {
        [$u, $p, $n] = array_pad(explode(':', $line, 3), 3, '');
        $users[$u] = ['password' => $p, 'fullname' => $n !== '' ? $n : $u];
    }
    return $users;
}

function demo_domain(): string
{
    return demo_env('DEMO_DOMAIN', 'example.test');
}

function demo_client(): \Expresso\ImSidecar\Client
{
    return new \Expresso\ImSidecar\Client(
        session_id(),
        demo_env('IMSIDECAR_URL', 'http://127.0.0.1:8765'),
        tokenFile: demo_env('IMSIDECAR_TOKEN_FILE') ?: null,
    );
}

/** Starts the session of a page; a visitor not logged in goes to the login page. */
function demo_page_session(): void
{
    session_start();
    if (!demo_logged_in()) {
        header('Location: login.php');
        exit;
    }
}

/** Is this session logged in the way Expresso marks it? */
function demo_logged_in(): bool
{
    return !empty($_SESSION['phpgw_session']['session_id']);
}

function h(string $s): string
{
    return htmlspecialchars($s, ENT_QUOTES, 'UTF-8');
}

/**
 * URL of a file of a pinned npm package for the independent-client pages
 * (strophe.php, converse.php): from DEMO_VENDOR_URL/<package>/<path> when
 * set (a local copy, e.g. node_modules served by the web server), else
 * from the jsDelivr CDN.
 */
function demo_vendor(string $package, string $version, string $path): string
{
    $base = demo_env('DEMO_VENDOR_URL');
    if ($base !== '') {
        return rtrim($base, '/') . '/' . $package . '/' . $path;
    }
    return 'https://cdn.jsdelivr.net/npm/' . $package . '@' . $version . '/' . $path;
}

/** The sidecar's BOSH endpoint as the browser reaches it through Apache. */
function demo_bosh_url(): string
{
    return demo_env('DEMO_BOSH_URL', '/im/http-bind');
}
