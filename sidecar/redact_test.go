package sidecar

import "testing"

func TestSecretKey(t *testing.T) {
	for key, want := range map[string]bool{
		"passwd": true, "password": true, "db_pass": true, "password_ldap_jabberit": true, "Sieve": false,
		"encryptkey": true, "api_key": true, "apiKey": true, "privateKey": true, "session_kp3": true, "kp3": true,
		"session_id": true, "sessionid": true, "api_token": true, "oauthSecret": true, "userPw": true, "user_pwd": true,
		"pin": true, "salt": true, "auth": true, "csrfToken": true, "cookie_pass": true, "credentials": true,
		"user": false, "account_lid": false, "session_lid": false, "fullname": false, "email": false, "theme": false,
		"keyboard": false, "session_dla": false, "phpgw_info": false, "expressomail": false, "content": false, "pwned_at": false,
	} {
		if got := secretKey(key); got != want {
			t.Errorf("secretKey(%q) = %v, want %v", key, got, want)
		}
	}
}
