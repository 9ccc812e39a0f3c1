<?php
// The part of Expresso Livre's header.inc.php that auth_messenger.php
// relies on, for the tests: the PHP session named by the "sessionid"
// cookie, $GLOBALS['phpgw_info']['server'] (the global configuration),
// $GLOBALS['phpgw']->accounts->membership() and
// CreateObject('phpgwapi.config', 'phpgwapi').
// env: EXPRESSO_FIXTURE, a JSON file:
//   {"server": {...}, "phpgwapi": {...}, "groups": {"user": ["group", ...]}}

$fixture = json_decode(file_get_contents(getenv('EXPRESSO_FIXTURE')), true);
$GLOBALS['phpgw_info']['server'] = $fixture['server'];

session_name('sessionid');
if (isset($_COOKIE['sessionid'])) {
    session_start();
}

final class FixtureAccounts
{
    public function __construct(private array $groups)
    {
    }

    public function membership(): array
    {
        $user = $_SESSION['phpgw_info']['expressomail']['user']['userid'] ?? '';
        $out = [];
        foreach ($this->groups[$user] ?? [] as $i => $name) {
            $out[] = ['account_id' => 2000 + $i, 'account_name' => $name];
        }
        return $out;
    }
}

final class FixtureConfig
{
    public array $config_data = [];

    public function __construct(private array $data)
    {
    }

    public function read_repository(): void
    {
        $this->config_data = $this->data;
    }
}

function CreateObject(string $class, string $app): object
{
    global $fixture;
    if ($class !== 'phpgwapi.config' || $app !== 'phpgwapi') {
        throw new LogicException("CreateObject($class, $app) is not in the fixture");
    }
    return new FixtureConfig($fixture['phpgwapi']);
}

$GLOBALS['phpgw'] = new stdClass();
$GLOBALS['phpgw']->accounts = new FixtureAccounts($fixture['groups']);
