//! SNS: the client for release announcements, built from the shared configuration
//! (same credentials, endpoint and timeouts as every other client).

use super::Clients;

/// An SNS client in `clients`' region.
pub fn client(clients: &Clients) -> aws_sdk_sns::Client {
    aws_sdk_sns::Client::new(&clients.config)
}
