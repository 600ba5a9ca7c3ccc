/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** Relay to use when the user has set none (build time); default: the page's own origin. */
  readonly VITE_FERRY_RELAY?: string;
}

interface ImportMeta {
  readonly env: ImportMetaEnv;
}
