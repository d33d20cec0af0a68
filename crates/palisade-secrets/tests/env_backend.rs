//! Everything that changes the process environment, in one test (one thread)
//! of its own binary, so no other test reads the environment meanwhile.

use palisade_config::{SecretRef, SecretsBackend, SecretsConfig, VaultConfig};
use palisade_secrets::{SecretError, SecretStore, resolve};

#[tokio::test(flavor = "current_thread")]
async fn environment_backend_and_references() {
    // SAFETY: this binary runs only this test, on one thread.
    unsafe {
        std::env::set_var("PTEST_SECRET_DB_PASSWORD", "hunter2");
        std::env::set_var("PTEST_SECRET_API_KEY_2", "abc");
        std::env::set_var("PTEST_PLAIN", "plain-value");
        std::env::set_var("PTEST_VAULT_TOKEN", "s.token");
        std::env::set_var(
            "PTEST_KEYS",
            format!("k1:{}", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="),
        );
    }
    let cfg = SecretsConfig {
        backend: SecretsBackend::Env,
        env_prefix: "PTEST_SECRET_".into(),
        ..SecretsConfig::default()
    };
    let store = SecretStore::from_config(&cfg).unwrap();
    assert_eq!(store.get("db_password").await.unwrap().expose(), b"hunter2");
    assert_eq!(store.get("api.key-2").await.unwrap().expose(), b"abc");
    assert!(matches!(store.get("nope").await, Err(SecretError::NotFound(_))));
    assert_eq!(store.list().await.unwrap(), vec!["api_key_2", "db_password"]);
    assert!(matches!(store.set("a", b"x"), Err(SecretError::Unsupported(_))));

    // References: Env reads the process, Secret asks the store.
    let plain = resolve(&store, &SecretRef::Env("PTEST_PLAIN".into())).await.unwrap();
    assert_eq!(plain.expose(), b"plain-value");
    let named = resolve(&store, &SecretRef::Secret("db_password".into())).await.unwrap();
    assert_eq!(named.expose_str().unwrap(), "hunter2");
    assert!(matches!(
        resolve(&store, &SecretRef::Env("PTEST_UNSET".into())).await,
        Err(SecretError::EnvNotSet(v)) if v == "PTEST_UNSET"
    ));

    // File backend keys from the key variable.
    let dir = tempfile::tempdir().unwrap();
    let file_cfg = SecretsConfig {
        backend: SecretsBackend::File,
        file: dir.path().join("s.json"),
        key_env: "PTEST_KEYS".into(),
        ..SecretsConfig::default()
    };
    let file = SecretStore::from_config(&file_cfg).unwrap();
    file.set("x", b"y").unwrap();
    assert_eq!(file.get("x").await.unwrap().expose(), b"y");
    let no_keys = SecretsConfig {
        key_env: "PTEST_NO_KEYS".into(),
        ..file_cfg
    };
    let err = SecretStore::from_config(&no_keys).unwrap_err();
    assert!(err.to_string().contains("PTEST_NO_KEYS"), "{err}");

    // Vault reads its token variable at construction.
    let vault = |token_env: &str| SecretsConfig {
        backend: SecretsBackend::Vault,
        vault: Some(VaultConfig {
            address: "https://vault.example.com".into(),
            mount: "secret".into(),
            path: "palisade".into(),
            token_env: token_env.into(),
            namespace: None,
            ca_file: None,
            allow_insecure_http: false,
        }),
        ..SecretsConfig::default()
    };
    assert!(SecretStore::from_config(&vault("PTEST_VAULT_TOKEN")).is_ok());
    let err = SecretStore::from_config(&vault("PTEST_NO_TOKEN")).unwrap_err();
    assert!(err.to_string().contains("PTEST_NO_TOKEN"), "{err}");
    let missing_table = SecretsConfig {
        backend: SecretsBackend::Vault,
        ..SecretsConfig::default()
    };
    assert!(matches!(
        SecretStore::from_config(&missing_table),
        Err(SecretError::Config(_))
    ));
}
