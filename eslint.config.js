import eslint from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  {
    ignores: [
      "node_modules/",
      "artifacts/",
      "cache/",
      "sdk/generated/",
      "coverage/",
      "bench/results/",
      "dist/",
      ".baton/",
    ],
  },
  eslint.configs.recommended,
  ...tseslint.configs.strict,
  {
    languageOptions: { parserOptions: { project: "./tsconfig.json", tsconfigRootDir: import.meta.dirname } },
    rules: {
      "@typescript-eslint/no-non-null-assertion": "off",
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/consistent-type-imports": "error",
      "no-console": "off",
    },
  },
  {
    // What users run speaks standard JSON-RPC only, so that it works on any EVM chain: the dev methods
    // of local chains (`hardhat_*`, `anvil_*`, `evm_*`, and viem's test client that sends them) are
    // for tests, the devnet and benchmarks, which live outside these folders.
    files: ["sdk/**/*.ts", "node/**/*.ts", "cli/**/*.ts"],
    rules: {
      "no-restricted-syntax": [
        "error",
        {
          selector: "Literal[value=/^(hardhat|anvil|evm)_\\w+$/]",
          message: "a local chain's dev method: the SDK, node and CLI use standard JSON-RPC only",
        },
        {
          selector: "TemplateElement[value.raw=/^(hardhat|anvil|evm)_\\w+$/]",
          message: "a local chain's dev method: the SDK, node and CLI use standard JSON-RPC only",
        },
      ],
      "no-restricted-imports": [
        "error",
        {
          paths: [
            {
              name: "viem",
              importNames: ["createTestClient", "testActions"],
              message: "a local chain's dev methods: the SDK, node and CLI use standard JSON-RPC only",
            },
            {
              name: "node:sqlite",
              allowTypeImports: true,
              message:
                "take DatabaseSync from sdk/utils/sqlite.ts: it loads node:sqlite without Node's ExperimentalWarning",
            },
          ],
        },
      ],
    },
  },
  { files: ["eslint.config.js"], ...tseslint.configs.disableTypeChecked },
  {
    // Example jobs in plain JavaScript: they run in the sandbox with only the Node binary, outside the TS project.
    files: ["examples/**/*.mjs"],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: {
      ...tseslint.configs.disableTypeChecked.languageOptions,
      globals: { process: "readonly", console: "readonly", Buffer: "readonly" },
    },
  },
  {
    // The explorer's pages: plain JavaScript run by the browser, outside the TS project.
    files: ["cli/explorer/web/**/*.js"],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: {
      ...tseslint.configs.disableTypeChecked.languageOptions,
      sourceType: "module",
      globals: {
        document: "readonly",
        location: "readonly",
        fetch: "readonly",
        EventSource: "readonly",
        Node: "readonly",
        uPlot: "readonly",
        dagre: "readonly",
      },
    },
  },
);
