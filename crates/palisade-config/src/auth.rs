//! Authentication, outbound credentials and the secret store (issue 3).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Where a secret value comes from. Secrets never appear in the file itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretRef {
    /// An environment variable of the gateway process.
    Env(String),
    /// A named entry of the configured secret store (`[secrets]`).
    Secret(String),
}

/// Whether MCP endpoints require a bearer token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication: every caller is anonymous. Refused on a non-loopback
    /// listener unless `allow_anonymous_non_loopback` is set.
    #[default]
    None,
    /// OAuth 2.1 resource server: a valid access token on every MCP request.
    Oauth,
}

/// `[auth]`: the gateway as an OAuth 2.1 resource server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Serve without authentication on a non-loopback address (not recommended).
    pub allow_anonymous_non_loopback: bool,
    /// The gateway's public base URL (`https://mcp.example.com`). Each endpoint's canonical
    /// resource URI is this plus its path (`…/mcp/github`); tokens must name it in `aud` (M1).
    /// Default: `http://` + the bound listen address.
    pub public_url: Option<String>,
    /// Scopes every MCP endpoint requires.
    pub required_scopes: Vec<String>,
    /// Scopes advertised in Protected Resource Metadata (default: the required ones).
    pub scopes_supported: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`, seconds.
    pub leeway_s: u64,
    /// Longest bearer token accepted, bytes.
    pub max_token_bytes: usize,
    /// Require DPoP-bound tokens on every endpoint.
    pub require_dpop: bool,
    /// DPoP proofs older (or further in the future) than this are refused, seconds.
    pub dpop_max_age_s: u64,
    /// Verified tokens kept in memory (by SHA-256 of the token) until they expire.
    pub cache_max_entries: u64,
    /// Token issuers trusted for JWT access tokens.
    pub issuers: Vec<IssuerConfig>,
    /// RFC 7662 introspection for opaque (non-JWT) tokens.
    pub introspection: Option<IntrospectionConfig>,
    /// The development issuer (`palisade demo`, `palisade token mint`). Loopback only.
    pub dev_issuer: Option<DevIssuerConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            allow_anonymous_non_loopback: false,
            public_url: None,
            required_scopes: Vec::new(),
            scopes_supported: Vec::new(),
            leeway_s: 30,
            max_token_bytes: 8 * 1024,
            require_dpop: false,
            dpop_max_age_s: 300,
            cache_max_entries: 100_000,
            issuers: Vec::new(),
            introspection: None,
            dev_issuer: None,
        }
    }
}

/// One trusted issuer of JWT access tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value. `{tenant}` stands for the token's `tid` claim (Entra ID
    /// multi-tenant), which must then be listed in `tenants` (or `tenants = ["*"]`).
    pub issuer: String,
    /// JWKS location; when absent it is found by RFC 8414 / OpenID Connect discovery.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Signature algorithms accepted from this issuer (RS256, PS256, ES256, EdDSA…).
    /// Fixed here, never taken from the token.
    pub algorithms: Vec<String>,
    /// Audiences accepted besides the endpoint's resource URI (Entra app id URI or GUID).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Required JWT `typ` header (RFC 9068 says `at+jwt`).
    #[serde(default)]
    pub typ: Option<String>,
    /// Tenant ids accepted for a `{tenant}` issuer.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Claim holding the user id (Entra: `oid`).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claims holding scopes: a space-separated string or an array (`scope`, Entra `scp`).
    #[serde(default = "default_scope_claims")]
    pub scope_claims: Vec<String>,
    /// Claims naming the OAuth client (`client_id`, `azp`, Entra v1 `appid`).
    #[serde(default = "default_client_claims")]
    pub client_id_claims: Vec<String>,
    /// Extra PEM CA bundle for discovery and JWKS fetches.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds between JWKS refreshes triggered by an unknown `kid` (flood guard).
    #[serde(default = "default_jwks_refresh_min")]
    pub jwks_min_refresh_s: u64,
    /// Seconds a fetched JWKS is used before a routine refresh.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl_s: u64,
}

fn default_subject_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_scope_claims() -> Vec<String> {
    vec!["scope".into(), "scp".into()]
}
fn default_client_claims() -> Vec<String> {
    vec!["client_id".into(), "azp".into(), "appid".into()]
}
fn default_jwks_refresh_min() -> u64 {
    30
}
fn default_jwks_ttl() -> u64 {
    3600
}

/// RFC 7662 token introspection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    pub endpoint: String,
    /// Expected `iss` of introspected tokens (checked when the response has one); also
    /// the principal's issuer.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    /// Audiences accepted besides the endpoint's resource URI.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Most seconds an introspection answer is cached (never past the token's `exp`).
    #[serde(default = "default_introspection_cache")]
    pub cache_max_s: u64,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_introspection_cache() -> u64 {
    300
}

/// The development issuer: a local ES256 key, JWKS served by the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIssuerConfig {
    /// PKCS#8 PEM of the signing key; created (mode 0600) when missing.
    pub key_file: PathBuf,
    /// Lifetime of minted tokens, seconds.
    #[serde(default = "default_dev_ttl")]
    pub token_ttl_s: u64,
}

fn default_dev_ttl() -> u64 {
    3600
}

/// Step-up requirements for one tool (Z4).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepUp {
    /// Scopes the token must carry to call the tool (else 403 `insufficient_scope`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// One of these `acr` values is required (else 401 `insufficient_user_authentication`).
    #[serde(default)]
    pub acr: Vec<String>,
    /// One of these `amr` values is required (e.g. `mfa`).
    #[serde(default)]
    pub amr: Vec<String>,
    /// The authentication (`auth_time`) must be at most this many seconds old.
    #[serde(default)]
    pub max_age_s: Option<u64>,
}

/// How the gateway authenticates itself to an HTTP upstream with OAuth (M5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOAuth {
    pub grant: OAuthGrant,
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    #[serde(default)]
    pub scope: Option<String>,
    /// RFC 8693 `audience` / the upstream's identifier at the authorization server.
    #[serde(default)]
    pub audience: Option<String>,
    /// RFC 8707 `resource` (the upstream's canonical URI).
    #[serde(default)]
    pub resource: Option<String>,
    /// Extra PEM CA bundle for the token endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Refresh this many seconds before the token expires.
    #[serde(default = "default_refresh_skew")]
    pub refresh_skew_s: u64,
}

fn default_refresh_skew() -> u64 {
    60
}

/// The OAuth grant used towards an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    /// The gateway's own token (client credentials), shared by all users.
    ClientCredentials,
    /// RFC 8693: the inbound token is exchanged for one aimed at the upstream, per user.
    TokenExchange,
}

/// `[secrets]`: where named secrets live (S1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    pub backend: SecretsBackend,
    /// Encrypted file store (backend = "file").
    pub file: PathBuf,
    /// Key file for the file store: `kid:base64(32 bytes)` lines; the first seals, all open.
    pub key_file: Option<PathBuf>,
    /// Environment variable with the file store keys, same format, comma-separated.
    pub key_env: String,
    /// Prefix of variables read by backend = "env": secret `db_password` is `PREFIX` + `DB_PASSWORD`.
    pub env_prefix: String,
    pub vault: Option<VaultConfig>,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            backend: SecretsBackend::Env,
            file: PathBuf::from("palisade-secrets.json"),
            key_file: None,
            key_env: "PALISADE_SECRETS_KEYS".into(),
            env_prefix: "PALISADE_SECRET_".into(),
            vault: None,
        }
    }
}

/// Secret store backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretsBackend {
    File,
    #[default]
    Env,
    Vault,
}

/// HashiCorp Vault KV version 2.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example.com:8200`
    pub address: String,
    /// KV v2 mount (default `secret`).
    #[serde(default = "default_vault_mount")]
    pub mount: String,
    /// Path under the mount holding one key per secret (`palisade` → `secret/data/palisade`).
    pub path: String,
    /// Environment variable holding the Vault token.
    #[serde(default = "default_vault_token_env")]
    pub token_env: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_insecure_http: bool,
}

fn default_vault_mount() -> String {
    "secret".into()
}
fn default_vault_token_env() -> String {
    "VAULT_TOKEN".into()
}

/// Per-endpoint authentication settings, kept on each upstream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointAuth {
    /// Scopes required for this endpoint, on top of `auth.required_scopes`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Require DPoP-bound tokens on this endpoint.
    #[serde(default)]
    pub require_dpop: bool,
    /// Tool name → step-up requirement.
    #[serde(default)]
    pub step_up: BTreeMap<String, StepUp>,
}
