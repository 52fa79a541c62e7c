//! Micro-benchmarks of the pure, per-request decisions: matching a request against 100
//! routes, a weighted pick, a header rewrite, and retry-budget accounting.

#![allow(
    clippy::unwrap_used,
    reason = "benchmark setup: a panic is how a broken fixture is reported"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Uri};
use weft_api::config::policy::RetryBudget;
use weft_api::gateway::{self, HttpRouteMatch};
use weft_proxy::filters::HeaderModifier;
use weft_proxy::policy::budget::Budget;
use weft_proxy::policy::weighted;
use weft_proxy::routing::{Origin, Router};

/// 100 matches of the kinds a real Service port has: prefixes, exact paths, header and
/// method matches, a few regular expressions.
fn hundred_routes() -> Router<usize> {
    let entries = (0..100).map(|i| {
        let m = match i % 5 {
            0 => serde_json::json!({"path": {"type": "PathPrefix", "value": format!("/svc{i}")}}),
            1 => serde_json::json!({"path": {"type": "Exact", "value": format!("/api/v1/items/{i}")}}),
            2 => serde_json::json!({
                "path": {"type": "PathPrefix", "value": format!("/api/v{i}")},
                "headers": [{"name": "x-tenant", "value": format!("t{i}")}]
            }),
            3 => serde_json::json!({"path": {"type": "PathPrefix", "value": format!("/m{i}")}, "method": "POST"}),
            _ => serde_json::json!({"path": {"type": "RegularExpression", "value": format!("/re{i}/[0-9]+")}}),
        };
        let m: HttpRouteMatch = serde_json::from_value(m).unwrap();
        let origin = Origin {
            created: None,
            route: format!("r{i:03}"),
            rule: 0,
            index: 0,
        };
        (origin, m, i)
    });
    Router::new(entries).unwrap()
}

fn route_match(c: &mut Criterion) {
    let router = hundred_routes();
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", "t97".parse().unwrap());
    headers.insert("user-agent", "bench".parse().unwrap());
    headers.insert("accept", "*/*".parse().unwrap());
    // A request that only the last prefix matches, past every other entry.
    let uri: Uri = "/svc95/orders/17?expand=lines".parse().unwrap();
    c.bench_function("route match over 100 routes", |b| {
        b.iter(|| {
            black_box(router.route(
                black_box(&Method::GET),
                black_box(&uri),
                black_box(&headers),
            ))
            .map(|m| *m.action)
        })
    });
}

fn weighted_pick(c: &mut Criterion) {
    let weights = [10u32, 20, 30, 40];
    let mut roll = 0u64;
    c.bench_function("weighted pick of 4 backends", |b| {
        b.iter(|| {
            roll = roll.wrapping_add(0x9e37_79b9_7f4a_7c15);
            weighted::pick(black_box(&weights), roll)
        })
    });
}

fn header_rewrite(c: &mut Criterion) {
    let spec: gateway::HeaderModifier = serde_json::from_value(serde_json::json!({
        "set": [{"name": "x-route", "value": "reviews-v2"}, {"name": "x-env", "value": "prod"}],
        "add": [{"name": "x-trace", "value": "on"}],
        "remove": ["x-debug", "cookie"]
    }))
    .unwrap();
    let modifier = HeaderModifier::new(&spec);
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "reviews.shop:9080"),
        ("user-agent", "bench"),
        ("accept", "*/*"),
        ("x-debug", "1"),
        ("cookie", "a=b"),
    ] {
        headers.insert(k, v.parse().unwrap());
    }
    c.bench_function("header rewrite (2 set, 1 add, 2 remove)", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| modifier.apply(h),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn retry_budget(c: &mut Criterion) {
    let now = tokio::time::Instant::now();
    let mut budget = Budget::new(&RetryBudget::default(), now);
    let mut i = 0u32;
    c.bench_function("retry budget: a deposit and a withdrawal", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let t = now + std::time::Duration::from_micros(u64::from(i));
            budget.deposit(t);
            black_box(budget.try_withdraw(t))
        })
    });
}

criterion_group!(
    decisions,
    route_match,
    weighted_pick,
    header_rewrite,
    retry_budget
);
criterion_main!(decisions);
