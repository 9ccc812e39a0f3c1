<?php
// Writes one session through PHP's own session machinery.
// env: SESS_ID, SESS_CODE (PHP statements that fill $_SESSION), SESS_DESTROY=1 to destroy instead.
declare(strict_types=1);
ob_start();
session_id(getenv('SESS_ID'));
session_start();
if (getenv('SESS_DESTROY') === '1') {
    session_destroy();
    exit(0);
}
(function () { eval(getenv('SESS_CODE') ?: ''); })();
session_write_close();
