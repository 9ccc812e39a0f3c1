<?php

declare(strict_types=1);

// PSR-4 autoloading of src/ and tests/ without Composer, so the suite runs
// with Debian's /usr/bin/phpunit on a machine that has no vendor/ directory.
spl_autoload_register(static function (string $class): void {
    $map = [
        'Expresso\\ImSidecar\\Tests\\' => __DIR__ . '/',
        'Expresso\\ImSidecar\\' => dirname(__DIR__) . '/src/',
    ];
    foreach ($map as $prefix => $dir) {
        if (str_starts_with($class, $prefix)) {
            $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }
            return;
        }
    }
});
