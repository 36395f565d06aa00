//! [`forward_impls!`]: the `Arc<T>` and `Box<T>` implementations of the crate's traits, each
//! method handed to the `T` inside.
//!
//! Written once as a macro so that every trait gets both wrappers the same way, and with
//! `clippy::missing_trait_methods` denied on them: a method added to a trait later must be
//! listed here too, or the wrappers would silently fall back to the trait's default instead of
//! the wrapped value's own implementation.

/// Implements `$trait` for `Arc<T>` and `Box<T>` (`T: $trait + ?Sized`) by forwarding every
/// listed method to `**self`. Synchronous methods go in `sync { … }`, `#[async_trait]` ones in
/// `async { … }`; each is written as its signature, ending in `;`.
macro_rules! forward_impls {
    (
        $trait:ident,
        sync { $( fn $f:ident(&self $(, $fa:ident: $ft:ty)* ) -> $fr:ty; )* }
        async { $( fn $a:ident(&self $(, $aa:ident: $at:ty)* ) -> $ar:ty; )* }
    ) => {
        $crate::forward::forward_impls!(@one [std::sync::Arc], $trait,
            sync { $( fn $f(&self $(, $fa: $ft)*) -> $fr; )* }
            async { $( fn $a(&self $(, $aa: $at)*) -> $ar; )* });
        $crate::forward::forward_impls!(@one [Box], $trait,
            sync { $( fn $f(&self $(, $fa: $ft)*) -> $fr; )* }
            async { $( fn $a(&self $(, $aa: $at)*) -> $ar; )* });
    };
    (@one [$($wrapper:tt)*], $trait:ident,
        sync { $( fn $f:ident(&self $(, $fa:ident: $ft:ty)* ) -> $fr:ty; )* }
        async { $( fn $a:ident(&self $(, $aa:ident: $at:ty)* ) -> $ar:ty; )* }
    ) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait::async_trait]
        impl<T: $trait + ?Sized> $trait for $($wrapper)*<T> {
            $(
                fn $f(&self $(, $fa: $ft)*) -> $fr {
                    (**self).$f($($fa),*)
                }
            )*
            $(
                async fn $a(&self $(, $aa: $at)*) -> $ar {
                    (**self).$a($($aa),*).await
                }
            )*
        }
    };
}

pub(crate) use forward_impls;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use crate::{
        ChatId, ChatKey, LlmProvider, MessageId, MessageStore, StreamHub, UserId, hub::LocalHub,
        provider::DemoProvider, store::MemoryStore,
    };

    async fn generic_store(store: impl MessageStore) -> usize {
        store
            .create_chat(&UserId::anonymous(), None, None)
            .await
            .unwrap();
        store
            .list_chats(&UserId::anonymous(), Default::default())
            .await
            .unwrap()
            .len()
    }

    async fn generic_hub(hub: impl StreamHub) -> bool {
        let key = ChatKey::from(ChatId::generate());
        let _live = hub.start(&key, MessageId::generate()).await.unwrap();
        // A provided method of the trait: the wrapper hands it to the hub inside.
        hub.is_live(&key).await.unwrap()
    }

    #[tokio::test]
    async fn arc_and_box_forward_to_the_value_inside() {
        assert_eq!(generic_store(Arc::new(MemoryStore::new())).await, 1);
        assert_eq!(generic_store(Box::new(MemoryStore::new())).await, 1);
        assert!(generic_hub(Arc::new(LocalHub::new())).await);
        assert!(generic_hub(Box::new(LocalHub::new())).await);
        let provider: Box<dyn LlmProvider> = Box::new(DemoProvider::new());
        assert_eq!(Arc::new(provider).name(), "demo");
    }
}
