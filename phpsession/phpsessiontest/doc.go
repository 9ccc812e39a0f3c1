// Package phpsessiontest writes PHP sessions with the real PHP CLI and runs
// a real redis-server, for the tests of phpsession and of the sidecar.
//
// Sessions are written through PHP's own session handlers (files or
// phpredis) and serialize handlers, so what the tests read is exactly what
// a production PHP would have written. A missing php or redis-server binary
// fails the test. Only under -short (go test -short, make test-short: the
// unit tests alone, on a machine without PHP or Redis) do PHP, StartRedis
// and StartRedisCluster skip the test instead, and with it every helper
// that runs PHP.
package phpsessiontest
