//! A panic in the work on one object must not end the daemon: every other image and catalog
//! would stop with it, and a restart would hit the same object again. Reconciles and import
//! tasks run through [`caught`], which turns a panic into an error the caller reports.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;

/// Runs `future`; a panic inside it becomes `Err` with the panic's message.
pub async fn caught<F: Future>(future: F) -> Result<F::Output, String> {
    // Unwind safety: after a panic the caller only reports and drops what the future held.
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_message_and_a_result_passes_through() {
        assert_eq!(caught(async { 7 }).await, Ok(7));
        let literal = caught(async { panic!("index out of range") }).await;
        assert_eq!(literal, Err::<(), _>("index out of range".to_string()));
        let formatted = caught(async {
            let what = "layer 3";
            panic!("cannot read {what}")
        })
        .await;
        assert_eq!(formatted, Err::<(), _>("cannot read layer 3".to_string()));
        let other = caught(async { std::panic::panic_any(42u8) }).await;
        assert_eq!(other, Err::<(), _>("a panic without a message".to_string()));
    }
}
