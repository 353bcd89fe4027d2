//! The payload validator's tests: every field's bounds, merge patches, bulk lines,
//! and nesting limits.

use super::*;

const LAMP: &str = r#"{"sku":"ACM-1","name":"Lamp","price":{"amount":2999,"currency":"EUR"},
    "attributes":{"color":"red"},"images":["https://img/1.jpg"],"categories":["lamps"]}"#;

#[test]
fn a_product_parses_with_defaults() {
    let input = ProductInput::parse(LAMP.as_bytes()).unwrap();
    assert_eq!(input.sku, "ACM-1");
    assert_eq!(input.stock, 0);
    assert!(input.active);
    assert_eq!(input.description, "");
    assert_eq!(input.categories, ["lamps"]);
}

#[test]
fn bad_payloads_name_their_problem() {
    let cases = [
        (
            r#"{"sku":"A","name":"x","price":{"amount":1,"currency":"EUR"},"colour":1}"#,
            "colour",
        ),
        (
            r#"{"sku":"A","name":"x","price":{"amount":-1,"currency":"EUR"}}"#,
            "price.amount",
        ),
        (
            r#"{"sku":"A","name":"x","price":{"amount":1,"currency":"eur"}}"#,
            "price.currency",
        ),
        (
            r#"{"sku":"A B","name":"x","price":{"amount":1,"currency":"EUR"}}"#,
            "sku",
        ),
        (
            r#"{"sku":"A","name":"","price":{"amount":1,"currency":"EUR"}}"#,
            "name",
        ),
        (
            r#"{"sku":"A","name":"x","price":{"amount":1,"currency":"EUR"},"stock":-2}"#,
            "stock",
        ),
        (
            r#"{"sku":"A","name":"x","price":{"amount":1,"currency":"EUR"},"attributes":[]}"#,
            "attributes",
        ),
        (
            r#"{"sku":"A","name":"x","price":{"amount":1,"currency":"EUR"},"images":["ftp://x"]}"#,
            "images",
        ),
        (
            r#"{"sku":"A","name":"x","price":{"amount":1,"currency":"EUR"},"categories":["Bad Slug"]}"#,
            "categories",
        ),
        (r#"{"sku":"A","name":"x"}"#, "price"),
    ];
    for (body, needle) in cases {
        let err = ProductInput::parse(body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains(needle), "{body}: {err}");
    }
}

#[test]
fn malformed_json_is_reported_with_its_position() {
    let err = ProductInput::parse(br#"{"sku": "A",, }"#).unwrap_err();
    assert!(matches!(err, WriteError::MalformedJson(_)), "{err}");
    assert!(err.to_string().chars().any(|c| c.is_ascii_digit()), "{err}");
}

#[test]
fn bulk_lines_carry_their_id() {
    let line = LAMP.replace('\n', " ").replacen('{', r#"{"id": 12, "#, 1);
    let (id, input) = parse_bulk_line(line.as_bytes()).unwrap();
    assert_eq!((id, input.sku.as_str()), (12, "ACM-1"));
    assert!(parse_bulk_line(LAMP.as_bytes()).is_err(), "no id");
    assert!(parse_bulk_line(br#"{"id": -1}"#).is_err());
    assert!(matches!(
        parse_bulk_line(b"{nope"),
        Err(WriteError::MalformedJson(_))
    ));
}

#[test]
fn categories_and_purges_parse() {
    let lamps = CategoryInput::parse("lamps", br#"{"name":"Lamps","parent":"home"}"#).unwrap();
    assert_eq!(lamps.parent.as_deref(), Some("home"));
    assert!(CategoryInput::parse("lamps", br#"{"name":"Lamps","parent":"lamps"}"#).is_err());
    assert!(CategoryInput::parse("lamps", br#"{"name":""}"#).is_err());
    assert!(CategoryInput::parse("lamps", br#"{"name":"x","extra":1}"#).is_err());
    assert_eq!(PurgeInput::parse(b"").unwrap().category, None);
    assert_eq!(
        PurgeInput::parse(br#"{"category":"lamps"}"#)
            .unwrap()
            .category
            .as_deref(),
        Some("lamps")
    );
    assert!(PurgeInput::parse(br#"{"category":"Bad Slug"}"#).is_err());
}

/// `{"k":{"k":...1}}`, `depth` objects deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::from(1), |inner, _| serde_json::json!({ "k": inner }))
}

fn with_attributes(attributes: &Value) -> String {
    let mut product: Value = serde_json::from_str(LAMP).unwrap();
    product["attributes"] = attributes.clone();
    product.to_string()
}

#[test]
fn nesting_is_bounded_in_puts_patches_and_bulk_lines() {
    assert!(nests_within(&Value::from(1), 0));
    assert!(nests_within(&nested(3), 3));
    assert!(!nests_within(&nested(4), 3));
    assert!(!nests_within(&serde_json::json!({"a": [1, [2, [3]]]}), 3));
    let limit = MAX_ATTRIBUTES_DEPTH;
    assert!(ProductInput::parse(with_attributes(&nested(limit)).as_bytes()).is_ok());
    for depth in [limit + 1, 200, 1000] {
        let err = ProductInput::parse(with_attributes(&nested(depth)).as_bytes()).unwrap_err();
        assert!(err.to_string().contains("32 levels"), "{depth}: {err}");
    }
    // Arrays count as levels too.
    let arrays = (1..limit).fold(Value::from(1), |inner, _| Value::Array(vec![inner]));
    let deep_array = serde_json::json!({ "list": [arrays] });
    assert!(ProductInput::parse(with_attributes(&deep_array).as_bytes()).is_err());

    let lamp = ProductInput::parse(LAMP.as_bytes()).unwrap();
    let patch = |attributes: Value| serde_json::json!({ "attributes": attributes }).to_string();
    assert!(lamp.patched(patch(nested(limit)).as_bytes()).is_ok());
    let err = lamp
        .patched(patch(nested(limit + 1)).as_bytes())
        .unwrap_err();
    assert!(err.to_string().contains("32 levels"), "{err}");
    assert!(lamp.patched(patch(nested(1000)).as_bytes()).is_err());

    let line = |depth| {
        let mut product: Value = serde_json::from_str(LAMP).unwrap();
        product["attributes"] = nested(depth);
        product["id"] = Value::from(5);
        product.to_string()
    };
    assert!(parse_bulk_line(line(limit).as_bytes()).is_ok());
    assert!(parse_bulk_line(line(limit + 1).as_bytes()).is_err());
    assert!(parse_bulk_line(line(1000).as_bytes()).is_err());
}

#[test]
fn deep_bodies_are_refused_before_a_value_is_built() {
    // Up to simd-json's own limit (1,024 levels), building the value recursed once
    // per level and overflowed this stack (a debug build's tokio worker has 2 MiB).
    let small_stack = std::thread::Builder::new().stack_size(1024 * 1024);
    let checked = small_stack.spawn(|| {
        let lamp = ProductInput::parse(LAMP.as_bytes()).unwrap();
        for depth in [MAX_PARSE_DEPTH + 1, 1_000, 1_023, 100_000] {
            let objects = format!("{}1{}", r#"{"k":"#.repeat(depth), "}".repeat(depth));
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            for deep in [objects, arrays] {
                let product = format!(
                    r#"{{"sku":"A","name":"x","price":{{"amount":1,"currency":"EUR"}},"attributes":{deep}}}"#
                );
                let line = product.replacen('{', r#"{"id":1,"#, 1);
                let patch = format!(r#"{{"attributes":{deep}}}"#);
                for err in [
                    ProductInput::parse(product.as_bytes()).unwrap_err(),
                    parse_bulk_line(line.as_bytes()).unwrap_err(),
                    lamp.patched(patch.as_bytes()).unwrap_err(),
                    lamp.patched(deep.as_bytes()).unwrap_err(),
                ] {
                    assert!(err.to_string().contains("32 levels"), "{depth}: {err}");
                }
            }
        }
    });
    checked
        .unwrap()
        .join()
        .expect("no overflow, every depth refused");
}

#[test]
fn merge_patches_follow_rfc_7396() {
    let lamp = ProductInput::parse(LAMP.as_bytes()).unwrap();
    let patched = lamp
        .patched(br#"{"price":{"amount":1999},"attributes":{"color":null,"size":"L"},"stock":4}"#)
        .unwrap();
    assert_eq!(patched.price.amount, 1999);
    assert_eq!(patched.price.currency, "EUR");
    assert_eq!(patched.attributes, serde_json::json!({"size": "L"}));
    assert_eq!(patched.stock, 4);
    assert_eq!(patched.name, lamp.name);
    assert!(
        lamp.patched(br#"{"name":null}"#).is_err(),
        "a required field removed"
    );
    assert!(lamp.patched(br#"[1]"#).is_err());
    assert!(lamp.patched(br#"{"unknown":1}"#).is_err());
    let cleared = lamp.patched(br#"{"images":null}"#).unwrap();
    assert!(cleared.images.is_empty());
}

#[test]
fn nul_characters_are_refused_where_postgresql_cannot_store_them() {
    let with = |field: &str, value: serde_json::Value| {
        let mut product = serde_json::json!({
            "sku": "NUL-1",
            "name": "Lamp",
            "price": {"amount": 100, "currency": "EUR"},
        });
        product[field] = value;
        ProductInput::parse(product.to_string().as_bytes())
    };
    for (field, value) in [
        ("description", serde_json::json!("a\u{0}b")),
        ("brand", serde_json::json!("a\u{0}b")),
        ("attributes", serde_json::json!({"k": "a\u{0}b"})),
        ("attributes", serde_json::json!({"a\u{0}b": 1})),
        ("images", serde_json::json!(["https://img/a\u{0}b.jpg"])),
    ] {
        let refused = with(field, value.clone());
        assert!(
            matches!(&refused, Err(WriteError::Invalid { field: f, .. }) if *f == field),
            "{field} {value}: {refused:?}"
        );
    }
    assert!(with("description", serde_json::json!("line\nbreak")).is_ok());
}
