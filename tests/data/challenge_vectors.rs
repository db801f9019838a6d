// Reference WWW-Authenticate vectors, each under a comment naming its source (azure-core's
// and .NET Azure.Core's challenge-parser tests, the Entra claims-challenge documentation), as
// a Rust expression included by the parser's unit tests (src/bearer/www_authenticate.rs) and
// by the layer's integration tests: a header value and, for a CAE challenge, the decoded
// claims the layer must send (`None`: the 401 is returned as is).
&[
    // azure-core tests/test_utils.py test_get_challenge_parameter #1
    (
        r#"Bearer authorization_uri="https://login.microsoftonline.com/tenant-id", resource="https://vault.azure.net""#,
        None,
    ),
    // azure-core tests/test_utils.py test_get_challenge_parameter #2 (CAE)
    (
        r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNzI2MDc3NTk1In0sInhtc19jYWVlcnJvciI6eyJ2YWx1ZSI6IjEwMDEyIn19fQ==""#,
        Some(
            r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"},"xms_caeerror":{"value":"10012"}}}"#,
        ),
    ),
    // azure-core tests/test_utils.py test_get_challenge_parameter_not_found
    (
        r#"Pop authorization_uri="https://login.microsoftonline.com/tenant-id", resource="https://vault.azure.net""#,
        None,
    ),
    // azure-core tests/test_utils.py test_get_multi_challenge_parameter #1
    (
        r#"Bearer authorization_uri="https://login.microsoftonline.com/tenant-id", resource="https://vault.azure.net" Bearer authorization_uri="https://login.microsoftonline.com/tenant-id", resource="https://vault.azure.net""#,
        None,
    ),
    // azure-core tests/test_utils.py test_get_multi_challenge_parameter #2 (Digest then Bearer CAE)
    (
        r#"Digest realm="foo@test.com", qop="auth,auth-int", nonce="123456abcdefg", opaque="123456", Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNzI2MDc3NTk1In0sInhtc19jYWVlcnJvciI6eyJ2YWx1ZSI6IjEwMDEyIn19fQ==""#,
        Some(
            r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"},"xms_caeerror":{"value":"10012"}}}"#,
        ),
    ),
    // azure-core tests/test_authentication.py (non-Bearer challenge; policy returns the 401)
    (r#"Basic realm="localhost""#, None),
    // azure-core tests/test_authentication.py test_challenge_auth_header_stripped_after_redirect
    (
        r#"Bearer error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsiZm9vIjoiYmFyIn19""#,
        Some(r#"{"access_token":{"foo":"bar"}}"#),
    ),
    // .NET Azure.Core AuthorizationChallengeParserTests CaeInsufficientClaims
    (
        r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOiB7ImZvbyI6ICJiYXIifX0=""#,
        Some(r#"{"access_token": {"foo": "bar"}}"#),
    ),
    // learn.microsoft.com/entra/identity-platform/claims-challenge (documented example; acrs claims request)
    (
        r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiY3AxIn19fQ==""#,
        Some(r#"{"access_token":{"acrs":{"essential":true,"value":"cp1"}}}"#),
    ),
]
