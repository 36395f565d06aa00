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
