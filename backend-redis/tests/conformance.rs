//! The shared conformance suite against the real Redis (`EVENTONCE_REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Every handle a factory makes has its own connection.

use eventonce_core::conformance::StoreFactory;
use eventonce_redis::RedisStore;

fn url() -> String {
    std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn factory() -> impl StoreFactory {
    let url = url();
    move || {
        let url = url.clone();
        async move {
            RedisStore::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("the conformance suite needs Redis at {url}: {e}"))
        }
    }
}

eventonce_core::conformance_tests!(factory);
