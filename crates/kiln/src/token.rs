//! `kiln token create`.

use crate::cli::TokenArgs;
use crate::serve::open_meta;
use anyhow::Context;
use kiln_domain::OwnerId;
use kiln_server::auth::{hash_token, new_owner_token};

pub async fn create(args: TokenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.owner > 0, "--owner must be a positive owner id");
    let meta = open_meta(&args.store).await?;
    let owner = OwnerId(args.owner);
    meta.ensure_owner(owner, &format!("owner {}", owner.0))
        .await
        .context("creating the owner")?;
    let token = new_owner_token();
    meta.add_token(owner, &hash_token(&token))
        .await
        .context("storing the token")?;
    eprintln!("created a token for owner {}; it is shown once:", owner.0);
    println!("{token}");
    Ok(())
}
