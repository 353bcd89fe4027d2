//! The configuration's tests: defaults, every variable's parsing and range, and that
//! no error message shows a secret.

use super::values::*;
use super::*;

#[test]
fn admin_tokens_are_tokens_or_their_digests() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        parse_tokens(&format!("long-enough,{digest}"))
            .unwrap()
            .len(),
        2
    );
    assert!(parse_tokens("short").is_err());
    assert!(parse_tokens("sha256:00").is_err());
    assert!(parse_tokens(&format!("sha256:{}", "z".repeat(64))).is_err());
    assert_eq!(parse_digest(digest.as_bytes()), Some([0xab; 32]));
}

const DB: (&str, &str) = ("CATALOG_DATABASE_URL", "postgres://u@h/db");

#[test]
fn defaults_apply_when_only_the_database_is_set() {
    let config = Config::from_source(&[DB][..]).unwrap();
    assert_eq!(config.database_url, "postgres://u@h/db");
    assert!(config.replica_urls.is_empty());
    assert_eq!(config.redis_url, None);
    assert_eq!(config.reader_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(config.writer_addr.to_string(), "127.0.0.1:8081");
    assert_eq!(config.read, ReadConfig::default());
}

#[test]
fn lists_are_split_and_trimmed() {
    let src = [
        DB,
        (
            "CATALOG_REPLICA_URLS",
            " postgres://a/x , postgresql://b/x ,",
        ),
        ("CATALOG_ADMIN_TOKENS", "token-one-1,token-two-2"),
    ];
    let config = Config::from_source(&src[..]).unwrap();
    assert_eq!(config.replica_urls, ["postgres://a/x", "postgresql://b/x"]);
    assert_eq!(config.admin_tokens.len(), 2);
    assert_eq!(config.admin_tokens[1].expose(), b"token-two-2");
    assert_eq!(format!("{:?}", config.admin_tokens[0]), "Secret(..)");
}

#[test]
fn a_missing_database_url_names_the_variable() {
    let err = Config::from_source(&[][..]).unwrap_err();
    assert_eq!(err.var, "CATALOG_DATABASE_URL");
}

#[test]
fn every_bad_value_names_its_variable() {
    let cases = [
        ("CATALOG_DATABASE_URL", "mysql://x"),
        ("CATALOG_REPLICA_URLS", "postgres://ok,http://bad"),
        ("CATALOG_REDIS_URL", "localhost:6379"),
        ("CATALOG_REDIS_PREFIX", "has space"),
        ("CATALOG_REDIS_TIMEOUT_MS", "0"),
        ("CATALOG_L2_TTL_SECS", "forever"),
        ("CATALOG_STREAM_MAXLEN", "10"),
        ("CATALOG_MAX_BODY_BYTES", "big"),
        ("CATALOG_IDEMPOTENCY_TTL_SECS", "0"),
        ("CATALOG_SWEEP_INTERVAL_SECS", "0"),
        ("CATALOG_OUTBOX_RETENTION_SECS", "-1"),
        ("CATALOG_SYNCHRONOUS_COMMIT", "always"),
        ("CATALOG_READER_ADDR", "not-an-address"),
        ("CATALOG_WRITER_ADDR", "127.0.0.1:99999"),
        ("CATALOG_ADMIN_TOKENS", "short"),
        ("CATALOG_DB_POOL_SIZE", "0"),
        ("CATALOG_LOG_FORMAT", "xml"),
        ("CATALOG_L1_BYTES", "-5"),
        ("CATALOG_L1_TTL_SECS", "0"),
        ("CATALOG_NEGATIVE_TTL_MS", "soon"),
        ("CATALOG_HTTP_MAX_AGE_SECS", "1.5"),
        ("CATALOG_HTTP_SWR_SECS", "-1"),
        ("CATALOG_REPLICA_CHECK_MS", "1"),
        ("CATALOG_REPLICA_MAX_LAG_BYTES", "lots"),
        ("CATALOG_PRIMARY_FALLBACK", "maybe"),
        ("CATALOG_MAX_CONNECTIONS", "0"),
        ("CATALOG_HEADER_TIMEOUT_MS", "0"),
        ("CATALOG_WRITE_STALL_MS", "99"),
        ("CATALOG_WEBHOOK_RETRY_SECS", "0"),
        ("CATALOG_WEBHOOK_BACKOFF_MS", "5"),
        ("CATALOG_WEBHOOK_BACKOFF_MAX_MS", "later"),
        ("CATALOG_WEBHOOK_TIMEOUT_MS", "99"),
        ("CATALOG_WEBHOOK_RETENTION_SECS", "59"),
    ];
    for (var, value) in cases {
        let mut src: HashMap<String, String> = HashMap::new();
        src.insert(DB.0.to_owned(), DB.1.to_owned());
        src.insert(var.to_owned(), value.to_owned());
        let err = Config::from_source(&src).unwrap_err();
        assert_eq!(err.var, var, "{value:?} was not refused as {var}");
        assert!(err.to_string().starts_with(var), "{err}");
    }
}

#[test]
fn errors_never_print_secrets() {
    let cases = [
        (
            "CATALOG_DATABASE_URL",
            "mysql://admin:hunter2-db@db.example/catalog",
            "mysql://admin:***@db.example/catalog",
        ),
        (
            "CATALOG_REPLICA_URLS",
            "postgres://r:hunter2-a@a/x,http://r:p@ss:hunter2-b@b/x",
            "postgres://r:***@a/x,http://r:***@b/x",
        ),
        (
            "CATALOG_REDIS_URL",
            "localhost:6379?password=hunter2-redis&db=1",
            "localhost:6379?password=***&db=1",
        ),
    ];
    for (var, value, masked) in cases {
        let src = [DB, (var, value)];
        let src = if var == DB.0 { &src[1..] } else { &src[..] };
        let err = Config::from_source(src).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{var} printed a password: {err}");
        assert!(err.contains(masked), "{var}: {err}");
    }
    let src = [DB, ("CATALOG_ADMIN_TOKENS", "a-long-admin-secret,short")];
    let err = Config::from_source(&src[..]).unwrap_err().to_string();
    assert_eq!(
        err,
        "CATALOG_ADMIN_TOKENS: invalid value (not shown: it holds secrets): \
         every token must be at least 8 characters"
    );
    // Values that hold no secret are still shown, to help the operator.
    let src = [DB, ("CATALOG_READER_ADDR", "not-an-address")];
    let err = Config::from_source(&src[..]).unwrap_err().to_string();
    assert!(err.contains("\"not-an-address\""), "{err}");
}

#[test]
fn urls_are_masked_whole() {
    assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(
        mask_url("postgres://u:p/w@x@h:1/db"),
        "postgres://u:***@h:1/db"
    );
    assert_eq!(mask_url("redis://:pw@h"), "redis://:***@h");
    assert_eq!(
        mask_url("postgres://h/db?PassWord=pw&sslmode=require"),
        "postgres://h/db?PassWord=***&sslmode=require"
    );
    assert_eq!(mask_url("u:pw@h"), "u:***@h");
}

#[test]
fn redis_urls_may_name_a_cluster_or_sentinels() {
    for url in [
        "redis://127.0.0.1:16379",
        "rediss://h:6380/1",
        "redis-cluster://127.0.0.1:17000,127.0.0.1:17001,127.0.0.1:17002",
        "redis-cluster://h:7000?node=h:7001",
        "redis-sentinel://s1:26379,s2:26379/0?sentinelServiceName=catalog",
    ] {
        let src = [DB, ("CATALOG_REDIS_URL", url)];
        let config = Config::from_source(&src[..]).unwrap();
        assert_eq!(config.redis_url.as_deref(), Some(url));
    }
    for url in [
        "cluster://h:1",
        "redis+cluster://h:1",
        "http://h:1",
        "h:7000,h:7001",
    ] {
        let src = [DB, ("CATALOG_REDIS_URL", url)];
        let err = Config::from_source(&src[..]).unwrap_err();
        assert_eq!(err.var, "CATALOG_REDIS_URL", "{url}");
        assert!(err.to_string().contains("redis-cluster://"), "{err}");
    }
    // A password in any node's part is masked.
    let src = [DB, ("CATALOG_REDIS_URL", "cluster://:hunter2@a:1,b:2")];
    let err = Config::from_source(&src[..]).unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn webhook_delivery_is_configured_and_its_backoff_bounded() {
    let config = Config::from_source(&[DB][..]).unwrap();
    assert_eq!(config.webhooks, WebhookConfig::default());
    assert_eq!(config.webhooks.retry_period, Duration::from_secs(86_400));
    let src = [
        DB,
        ("CATALOG_WEBHOOK_RETRY_SECS", "30"),
        ("CATALOG_WEBHOOK_BACKOFF_MS", "50"),
        ("CATALOG_WEBHOOK_BACKOFF_MAX_MS", "2000"),
        ("CATALOG_WEBHOOK_TIMEOUT_MS", "1500"),
        ("CATALOG_WEBHOOK_RETENTION_SECS", "3600"),
    ];
    let webhooks = Config::from_source(&src[..]).unwrap().webhooks;
    assert_eq!(
        webhooks,
        WebhookConfig {
            retry_period: Duration::from_secs(30),
            backoff_first: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            timeout: Duration::from_millis(1500),
            retention: Duration::from_secs(3600),
        }
    );
    let src = [
        DB,
        ("CATALOG_WEBHOOK_BACKOFF_MS", "5000"),
        ("CATALOG_WEBHOOK_BACKOFF_MAX_MS", "1000"),
    ];
    let err = Config::from_source(&src[..]).unwrap_err();
    assert_eq!(err.var, "CATALOG_WEBHOOK_BACKOFF_MAX_MS");
}

#[test]
fn blank_optional_values_mean_unset() {
    let src = [DB, ("CATALOG_REDIS_URL", "  ")];
    assert_eq!(Config::from_source(&src[..]).unwrap().redis_url, None);
}
