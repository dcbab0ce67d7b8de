//! Ordinary serde_json patterns whose results depend on serde_json's features. Prints one
//! line per pattern; the output must not change when eventonce is in the dependency tree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Untagged {
    Int(i64),
    Float(f64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Inner {
    price: f64,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Flattened {
    name: String,
    #[serde(flatten)]
    inner: Inner,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind")]
#[allow(dead_code)]
enum Tagged {
    Circle { radius: f64 },
    Square { side: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
struct Plain {
    amount: f64,
    count: u64,
}

fn show<T: std::fmt::Debug, E: std::fmt::Display>(name: &str, r: Result<T, E>) {
    match r {
        Ok(v) => println!("{name}: Ok({v:?})"),
        Err(e) => println!("{name}: Err({e})"),
    }
}

fn value(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(text)
}

fn main() {
    show("untagged 12.5", serde_json::from_str::<Untagged>("12.5"));
    show("untagged 7", serde_json::from_str::<Untagged>("7"));
    show(
        "flatten f64",
        serde_json::from_str::<Flattened>(r#"{"name":"a","price":9.99}"#),
    );
    show(
        "internally tagged f64",
        serde_json::from_str::<Tagged>(r#"{"kind":"Circle","radius":1.5}"#),
    );
    show(
        "internally tagged u64",
        serde_json::from_str::<Tagged>(r#"{"kind":"Square","side":3}"#),
    );
    println!(
        "1.00 == json!(1.0): {}",
        value("1.00").map(|v| v == json!(1.0)).unwrap_or(false)
    );
    println!("1 == json!(1.0): {}", json!(1) == json!(1.0));
    show(
        "re-serialise [1.10, 2E3]",
        value("[1.10, 2E3]").map(|v| v.to_string()),
    );
    show(
        "big integer",
        value("12345678901234567890123").map(|v| v.to_string()),
    );
    show("1e400", value("1e400").map(|v| v.to_string()));
    show("as_u64 of 1e2", value("1e2").map(|v| v.as_u64()));
    show("is_f64 of 10", value("10").map(|v| v.is_f64()));
    for hard in [
        "2.2250738585072011e-308",
        "0.30000000000000004441",
        "9007199254740993",
        "1.00000000000000011102230246251565404236316680908203126",
        "7.038531e-26",
        "1448997445238699",
    ] {
        show(
            &format!("f64 bits of {hard}"),
            serde_json::from_str::<f64>(hard).map(f64::to_bits),
        );
    }
    show(
        "map of f64",
        serde_json::from_str::<BTreeMap<String, f64>>(r#"{"x": 1, "y": 2.50}"#),
    );
    show(
        "struct round trip",
        serde_json::from_str::<Plain>(r#"{"amount": 0.10, "count": 3}"#)
            .and_then(|p| serde_json::to_string(&p)),
    );
    show(
        "from_value f64 of 3",
        serde_json::from_value::<f64>(json!(3)),
    );
    show(
        "key order",
        value(r#"{"b":1,"a":2}"#).map(|v| v.to_string()),
    );
    println!("0.1 + 0.2: {}", json!(0.1 + 0.2));
    println!(
        "Number of 1.0: {}",
        serde_json::Number::from_f64(1.0)
            .map(|n| n.to_string())
            .unwrap_or_default()
    );
}
