//! The shared conformance suite against `MemoryStore`: every handle a factory makes
//! shares one store, as every consumer task of a process would.

use eventonce_core::conformance::StoreFactory;
use eventonce_memory::MemoryStore;

async fn factory() -> impl StoreFactory {
    let store = MemoryStore::new();
    move || {
        let store = store.clone();
        async move { store }
    }
}

eventonce_core::conformance_tests!(factory);
