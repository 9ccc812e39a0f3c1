<?php
// A control for the old-PHP parse check: short array syntax (PHP 5.4+)
// must fail on PHP 5.2 and parse on every later version.
$a = ['x' => 1];
