//! S3: the client for the legacy import path (image parts, the import manifest), built
//! from the shared configuration. With an endpoint override (a local test server, an
//! S3-compatible store) buckets are addressed in the path (`ENDPOINT/BUCKET/KEY`), as
//! such endpoints expect; against AWS they are addressed by host name.

use super::Clients;

/// An S3 client in `clients`' region.
pub fn client(clients: &Clients) -> aws_sdk_s3::Client {
    let path_style = clients.config.endpoint_url().is_some();
    let conf = aws_sdk_s3::config::Builder::from(&clients.config)
        .force_path_style(path_style)
        // Checksums are ours to compute (SHA-256, sent as headers, verified by S3); no
        // CRC32 the SDK would add in a streamed trailer.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
