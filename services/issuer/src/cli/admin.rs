//! Talking to the running issuer over its admin socket (SPEC §9).

use anyhow::{Context as _, anyhow, bail};
use baton_issuer::admin::{self, ClientError, Reply, Request};

use super::Context;

/// Sends `request` to the issuer running on the data directory. A command the issuer
/// refused is returned as the reply, not as an error: callers decide how to show it.
pub(super) fn call(ctx: &Context, request: &Request) -> anyhow::Result<Reply> {
    let socket = ctx.data_dir.admin_socket_path();
    match admin::call(&socket, request) {
        Ok(reply) => Ok(reply),
        Err(ClientError::NotRunning { .. }) => Err(anyhow!(
            "no issuer is running for {} (cannot connect to {})",
            ctx.data_dir.root().display(),
            socket.display()
        )),
        Err(e) => Err(e).with_context(|| format!("`{}` was not delivered", request.name())),
    }
}

/// The reply of a refused command as an error: its message, on one line.
pub(super) fn refused(request: &Request, reply: &Reply) -> anyhow::Result<()> {
    bail!(
        "{}",
        reply.error_message().map_or_else(
            || format!("the issuer refused `{}`", request.name()),
            str::to_owned
        )
    )
}
