// The frontend's lint (`jlpm lint`, run by scripts/test.sh): typescript-eslint's recommended
// rules; formatting is prettier's (`prettier --check`).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['lib/', 'build-test/', 'node_modules/', '.yarn/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // the page reads untyped parts of JupyterLab's widgets (a DocumentWidget's context)
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      eqeqeq: 'error',
      curly: 'error',
      'prefer-const': 'error'
    }
  }
);
