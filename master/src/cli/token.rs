//! `fogmesh token create`: single-use join tokens for agents.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;

use super::client::Client;
use super::duration_arg;
use crate::model::{CreateToken, TokenCreated};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a single-use join token; prints only the token on stdout so
    /// that `TOKEN=$(fogmesh token create)` works.
    Create {
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_parser = duration_arg)]
        ttl: Duration,
    },
}

pub async fn run(client: &Client, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create { ttl } => {
            let created: TokenCreated = client.send(Method::POST, "/v1/tokens", &CreateToken { ttl_seconds: ttl.as_secs() }).await?;
            println!("{}", created.token);
            eprintln!("single-use join token, valid for {}s: fogmesh-agent join --master HOST:7401 --token <token> ...", ttl.as_secs());
            Ok(())
        }
    }
}
