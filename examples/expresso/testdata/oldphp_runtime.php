<?php
// Runs auth_messenger.php's functions on whatever PHP includes this (the
// PHP.wasm builds, 5.2 up): every version must print the same JSON.
define('IMSIDECAR_AUTH_MESSENGER_LIBRARY', 1);
require '/src/file.php';
$session = array('phpgw_info' => array('expressomail' => array(
    'user' => array('userid' => 'alice', 'passwd' => 'S3gr3d0-da-Alice'),
    'email_server' => array('organisationName' => "Fazenda \xc7"),
)));
$groups = serialize(array('Grupo IM;im-users', 'Diretoria;diretoria'));
$member = array(array('account_id' => 1, 'account_name' => 'todos'), array('account_id' => 2, 'account_name' => 'im-users'));
echo json_encode(array(
    imsidecar_messenger_answer($session, imsidecar_messenger_allowed($groups, $member), 'example.test', '/im/http-bind'),
    imsidecar_messenger_answer($session, imsidecar_messenger_allowed($groups, array(array('account_name' => 'todos'))), 'example.test', '/im/http-bind'),
    imsidecar_messenger_allowed('O:8:"stdClass":1:{s:1:"a";s:10:"x;im-users";}', $member),
    imsidecar_messenger_allowed('', $member),
    imsidecar_plain_blob('a@b', 'a'),
    imsidecar_plain_blob('ab@b', 'ab'),
    imsidecar_plain_blob('abc@b', 'abc'),
));
