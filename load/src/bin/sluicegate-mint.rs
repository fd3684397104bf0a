//! Mints a signing key and a JWT for the benchmarks: adds the public key to a JWKS file
//! (created when missing) and prints a token signed with the private key.
//!
//!   sluicegate-mint --alg RS256|ES256 --jwks FILE --kid KID [--issuer I --audience A]

use anyhow::{Context, bail};
use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use clap::Parser;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    alg: String,
    #[arg(long)]
    jwks: std::path::PathBuf,
    #[arg(long)]
    kid: String,
    #[arg(long, default_value = "bench-idp")]
    issuer: String,
    #[arg(long, default_value = "sluicegate")]
    audience: String,
    #[arg(long, default_value = "bench-user")]
    subject: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (alg, key) = match args.alg.as_str() {
        "RS256" => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                .map_err(|_| anyhow::anyhow!("PKCS#8 encoding failed"))?;
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                base64::engine::general_purpose::STANDARD.encode(der.as_ref())
            );
            (Algorithm::RS256, EncodingKey::from_rsa_pem(pem.as_bytes())?)
        }
        "ES256" => {
            let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            )
            .and_then(|pair| pair.to_pkcs8v1())
            .map_err(|_| anyhow::anyhow!("EC key generation failed"))?;
            (Algorithm::ES256, EncodingKey::from_ec_der(pkcs8.as_ref()))
        }
        other => bail!("--alg {other}: RS256 or ES256"),
    };
    let mut set: JwkSet = match std::fs::read(&args.jwks) {
        Ok(text) => serde_json::from_slice(&text).context("the JWKS file is not a key set")?,
        Err(_) => JwkSet { keys: Vec::new() },
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg)?;
    jwk.common.key_id = Some(args.kid.clone());
    set.keys.push(jwk);
    std::fs::write(&args.jwks, serde_json::to_vec(&set)?)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({
        "iss": args.issuer, "aud": args.audience, "sub": args.subject,
        "iat": now, "exp": now + 3600,
    });
    let mut header = Header::new(alg);
    header.kid = Some(args.kid);
    println!("{}", jsonwebtoken::encode(&header, &claims, &key)?);
    Ok(())
}
