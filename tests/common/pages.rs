//! The dashboard's pages over plain HTTP, as a browser without JavaScript sees them: redirects
//! are not followed, so a test sees each 303 and where it leads.
use reqwest::redirect::Policy;
use reqwest::StatusCode;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// The status and HTML of a page.
pub async fn get(url: &str) -> (StatusCode, String) {
    let res = client().get(url).send().await.unwrap();
    let status = res.status();
    (status, res.text().await.unwrap())
}

/// A form post, form-encoded as a browser sends it.
pub async fn post_form(url: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    client().post(url).form(fields).send().await.unwrap()
}

/// Where a redirect leads.
pub fn location(res: &reqwest::Response) -> String {
    res.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string()
}
