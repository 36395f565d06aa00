//! [`Fallback`]: tries a list of providers in order until one starts replying.

use std::sync::Arc;

use futures::StreamExt;

use crate::{
    ChatRequest, Delta, DeltaStream, DynLlmProvider, Error, LlmProvider, Result, RetryNotice,
};

/// A chain of providers tried in order when one fails before any output.
///
/// Any error before the first output delta (text, reasoning, tool-call fragment) moves on to the
/// next provider, after a [`Delta::Retry`] naming it; [`Error::Cancelled`] does not. Once output
/// went out, errors pass through: a reply is never stitched from two models. When every provider
/// failed, the last error passes through.
///
/// The request goes unchanged to every provider: leave [`ChatRequest::model`] unset and give each
/// provider its model on its builder, so a fallback to another vendor does not ask it for a model
/// it does not have.
///
/// ```
/// use chatstream::{DynLlmProvider, provider::DemoProvider};
/// use chatstream::resilience::{Fallback, ResilienceExt, RetryPolicy};
/// use std::sync::Arc;
///
/// let primary: DynLlmProvider = Arc::new(DemoProvider::new().with_retry(RetryPolicy::default()));
/// let backup: DynLlmProvider = Arc::new(DemoProvider::new());
/// let provider = Fallback::new(vec![primary, backup]);
/// ```
#[derive(Debug, Clone)]
pub struct Fallback {
    providers: Arc<[DynLlmProvider]>,
}

impl Fallback {
    /// A chain of `providers`, tried in this order. An empty chain answers every request with
    /// [`Error::Config`].
    pub fn new(providers: Vec<DynLlmProvider>) -> Self {
        Fallback {
            providers: providers.into(),
        }
    }

    /// The providers, in order.
    pub fn providers(&self) -> &[DynLlmProvider] {
        &self.providers
    }
}

impl LlmProvider for Fallback {
    /// The first provider's name.
    fn name(&self) -> &str {
        self.providers.first().map_or("fallback", |p| p.name())
    }

    /// The first provider's default model.
    fn default_model(&self) -> &str {
        self.providers.first().map_or("", |p| p.default_model())
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        if self.providers.is_empty() {
            return futures::stream::once(async {
                Err(Error::Config("fallback: no providers".into()))
            })
            .boxed();
        }
        let state = State {
            providers: self.providers.clone(),
            request,
            index: 0,
            current: None,
            output_seen: false,
            done: false,
        };
        futures::stream::unfold(state, step).boxed()
    }
}

struct State {
    providers: Arc<[DynLlmProvider]>,
    request: ChatRequest,
    index: usize,
    current: Option<DeltaStream>,
    output_seen: bool,
    done: bool,
}

async fn step(mut st: State) -> Option<(Result<Delta>, State)> {
    if st.done {
        return None;
    }
    let provider = st.providers.get(st.index)?.clone();
    let stream = st
        .current
        .get_or_insert_with(|| provider.stream(st.request.clone()));
    match stream.next().await {
        None => None,
        Some(Ok(delta)) => {
            st.output_seen |= delta.is_output();
            Some((Ok(delta), st))
        }
        Some(Err(error)) => {
            st.current = None;
            let next = st.providers.get(st.index + 1);
            match next {
                Some(next) if !st.output_seen && !matches!(error, Error::Cancelled) => {
                    tracing::debug!(
                        from = provider.name(),
                        to = next.name(),
                        %error,
                        "falling back to the next provider"
                    );
                    let notice = Delta::Retry(RetryNotice {
                        attempt: u32::try_from(st.index + 2).unwrap_or(u32::MAX),
                        provider: next.name().to_owned(),
                        reason: error.to_string(),
                    });
                    st.index += 1;
                    Some((Ok(notice), st))
                }
                _ => {
                    st.done = true;
                    Some((Err(error), st))
                }
            }
        }
    }
}
