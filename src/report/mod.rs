//! Commit checks (placeholder until the providers land).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckState {
    Pending,
    Success,
    Failure,
    Error,
    Superseded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    pub name: String,
    pub phase: String,
    pub progress: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitCheck {
    pub commit: String,
    pub context: String,
    pub state: CheckState,
    pub description: String,
    pub details: Vec<ImageRow>,
    pub target_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    GitHubStatus,
    GitHubCheckRun,
    Gitea,
    GitLab,
}

#[derive(Clone)]
pub enum ForgeCredentials {
    Token(String),
    GitHubApp {
        app_id: String,
        installation_id: String,
        private_key_pem: String,
    },
}

#[derive(Clone)]
pub struct ForgeConfig {
    pub kind: ProviderKind,
    pub api_url: String,
    pub repository: String,
    pub credentials: ForgeCredentials,
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Clone)]
pub struct Reporter;

impl Reporter {
    pub fn new(_config: ForgeConfig) -> Result<Self, String> {
        Ok(Self)
    }
    pub async fn report(&self, _check: CommitCheck) {}
}
