package phpsession_test

import (
	"fmt"

	"expressolivre.org/imsidecar/phpsession"
)

func ExampleDecode() {
	data := []byte(`user|a:2:{s:5:"login";s:5:"alice";s:4:"name";s:4:"Jos` + "\xe9" + `";}count|i:3;`)
	vars, err := phpsession.Decode(data, phpsession.SerializerPHP, phpsession.DefaultLimits)
	if err != nil {
		fmt.Println(err)
		return
	}
	login, _ := vars.Path("user", "login")
	fmt.Println(string(login.Bytes()))
	latin1, _ := phpsession.ParseCharset("ISO-8859-1")
	out, _ := phpsession.MarshalJSON(vars, latin1)
	fmt.Println(string(out))
	// Output:
	// alice
	// {"user":{"login":"alice","name":"José"},"count":3}
}

func ExampleValidateID() {
	fmt.Println(phpsession.ValidateID("../../etc/passwd", 0))
	fmt.Println(phpsession.ValidateID("k3j5h6g7f8d9s0a1q2w3e4r5t6y7u8i9", 0))
	// Output:
	// phpsession: invalid session id: length 16 outside 22..256
	// <nil>
}
