//! `tracer top`: live view of one or many agents (docs/top.md).

use anyhow::Result;

pub use crate::top::TopOptions;

pub async fn top(opts: TopOptions) -> Result<()> {
    crate::top::run(opts).await
}
