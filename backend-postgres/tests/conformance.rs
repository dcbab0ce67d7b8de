//! The shared conformance suite against the real PostgreSQL (`EVENTONCE_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`), in a schema of this run's own.

mod support;

use eventonce_core::conformance::StoreFactory;

async fn factory() -> impl StoreFactory {
    // One pool per test (each test has its own runtime); handles share it, as the tasks
    // of a consumer process share their pool. Five connections race for real.
    let store = support::store(5).await;
    move || {
        let store = store.clone();
        async move { store }
    }
}

eventonce_core::conformance_tests!(factory);
