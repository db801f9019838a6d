//! The entry keys, built as msal builds them.

/// Key of an AccessToken entry (`home_account_id` empty for app-only tokens).
pub(super) fn access_token_key(
    home_account_id: &str,
    environment: &str,
    client_id: &str,
    realm: &str,
    target: &str,
) -> String {
    [
        home_account_id,
        environment,
        "accesstoken",
        client_id,
        realm,
        target,
    ]
    .join("-")
    .to_lowercase()
}

/// Key of a RefreshToken entry (realm empty: refresh tokens cross tenants).
pub(super) fn refresh_token_key(
    home_account_id: &str,
    environment: &str,
    client_id: &str,
    target: &str,
) -> String {
    [
        home_account_id,
        environment,
        "refreshtoken",
        client_id,
        "",
        target,
    ]
    .join("-")
    .to_lowercase()
}

/// Key of an IdToken entry (the trailing empty target is part of the schema).
pub(super) fn id_token_key(
    home_account_id: &str,
    environment: &str,
    client_id: &str,
    realm: &str,
) -> String {
    [
        home_account_id,
        environment,
        "idtoken",
        client_id,
        realm,
        "",
    ]
    .join("-")
    .to_lowercase()
}

/// Key of an Account entry.
pub(super) fn account_key(home_account_id: &str, environment: &str, realm: &str) -> String {
    [home_account_id, environment, realm]
        .join("-")
        .to_lowercase()
}

/// Key of an AppMetadata entry (not lower-cased).
pub(super) fn app_metadata_key(environment: &str, client_id: &str) -> String {
    format!("appmetadata-{environment}-{client_id}")
}
