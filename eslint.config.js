// Lint: TypeScript rules plus the folder import boundaries of ../shared/STYLE.md.
// A boundary violation is an error, and `npm test` runs lint, so it fails the tests.
import tseslint from "typescript-eslint";

const noRelativeOut = {
  regex: "^\\.\\./",
  message: "Import across folders through the #src/#server/#proto aliases, not relative paths.",
};
const nodeBuiltins = {
  regex: "^node:",
  message: "src/ is environment-neutral: no node: imports (put Node code in server/).",
};
const onlyFrom = (allowed) =>
  ["#src", "#server", "#proto", "#test", "#layer"]
    .filter((a) => !allowed.includes(a))
    .map((a) => ({ regex: `^${a}/`, message: `This folder may not import ${a}/* (see STYLE.md).` }));

export default tseslint.config(
  { ignores: ["node_modules/**", "proto/gen/**", "models/**", "dist/**", "neuroglancer-layer/dist/**", "**/*.js.map"] },
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/consistent-type-imports": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
    },
  },
  {
    files: ["src/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", { patterns: [noRelativeOut, nodeBuiltins, ...onlyFrom(["#src"])] }],
    },
  },
  {
    files: ["server/**/*.ts"],
    rules: { "no-restricted-imports": ["error", { patterns: [noRelativeOut, ...onlyFrom(["#src", "#server", "#proto"])] }] },
  },
  {
    files: ["neuroglancer-layer/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", { patterns: [noRelativeOut, nodeBuiltins, ...onlyFrom(["#src", "#layer"])] }],
    },
  },
);
